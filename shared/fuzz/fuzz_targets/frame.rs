//! Any byte stream fed to the frame decoder, in any split, yields frames or a
//! clean error, never a panic or an oversized allocation.
#![no_main]

use aios_shared::wire::{encode_frame, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(0) as usize % (data.len() + 1);
    let mut decoder = FrameDecoder::new();
    for chunk in [&data[..split], &data[split..]] {
        decoder.extend(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    // Whatever decodes must re-encode.
                    let mut out = Vec::new();
                    encode_frame(&frame, &mut out).expect("a decoded frame re-encodes");
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});
