//! The enrolment path a peer without a certificate reaches: its first frame
//! (an `Enroll` with a token, labels and a CSR), the token's secret hash,
//! the labels against what a token binds, and the CSR's parser (x509-parser
//! through rcgen, as the control plane's `Pki::issue_edge_certificate` uses
//! it). Any bytes are refused cleanly; never a panic.
#![no_main]

use aios_shared::wire::{decode_frame_body, Frame};
use libfuzzer_sys::fuzz_target;
use rcgen::CertificateSigningRequestParams;
use rustls_pki_types::CertificateSigningRequestDer;

fuzz_target!(|data: &[u8]| {
    // The CSR parser on raw bytes.
    let _ = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(data));
    // The same bytes as a first frame.
    if let Ok(Frame::Enroll(request)) = decode_frame_body(data) {
        let _ = aios_shared::token::secret_hash(&request.token);
        let bound = [("site".to_owned(), "paris".to_owned())].into_iter().collect();
        let _ = aios_shared::token::enrolment_labels(&bound, &request.labels);
        let _ =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(request.csr_der.as_slice()));
    }
});
