//! A UDP relay between an edge and the control plane that drops, duplicates
//! and reorders datagrams, so the tests can run QUIC over a lossy link.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::net::UdpSocket;

/// Fault rates, each a probability per datagram.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Dropped.
    pub loss: f64,
    /// Sent twice.
    pub duplication: f64,
    /// Held back 5-30 ms, so later datagrams overtake it.
    pub reordering: f64,
}

/// Datagram counts, to show the faults really happened.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Datagrams received from either side.
    pub seen: u64,
    /// Dropped.
    pub dropped: u64,
    /// Duplicated.
    pub duplicated: u64,
    /// Reordered.
    pub reordered: u64,
}

/// A running relay; stops when dropped.
pub struct Relay {
    /// Where clients should send.
    pub addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays from a fresh loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr, faults: Faults) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let counts = Arc::new(Mutex::new(Counts::default()));
        let task_counts = counts.clone();
        let task = tokio::spawn(async move {
            let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            let mut pumps = Vec::new();
            while let Ok((n, client)) = front.recv_from(&mut buf).await {
                let back = match backs.get(&client) {
                    Some(back) => back.clone(),
                    None => {
                        let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else { continue };
                        if socket.connect(upstream).await.is_err() {
                            continue;
                        }
                        let back = Arc::new(socket);
                        backs.insert(client, back.clone());
                        // Upstream -> client.
                        let (front, back_rx, counts) = (front.clone(), back.clone(), task_counts.clone());
                        pumps.push(tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = back_rx.recv(&mut buf).await {
                                let datagram = buf[..n].to_vec();
                                let front = front.clone();
                                forward(datagram, faults, &counts, move |d| {
                                    let front = front.clone();
                                    async move {
                                        let _ = front.send_to(&d, client).await;
                                    }
                                });
                            }
                        }));
                        back
                    }
                };
                // Client -> upstream.
                forward(buf[..n].to_vec(), faults, &task_counts, move |d| {
                    let back = back.clone();
                    async move {
                        let _ = back.send(&d).await;
                    }
                });
            }
            for pump in pumps {
                pump.abort();
            }
        });
        Ok(Relay { addr, counts, task })
    }

    /// What the relay has done so far.
    pub fn counts(&self) -> Counts {
        *self.counts.lock().expect("counts lock is never poisoned")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn forward<F, Fut>(datagram: Vec<u8>, faults: Faults, counts: &Mutex<Counts>, send: F)
where
    F: Fn(Vec<u8>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut rng = rand::thread_rng();
    let mut counts = counts.lock().expect("counts lock is never poisoned");
    counts.seen += 1;
    if rng.gen_bool(faults.loss) {
        counts.dropped += 1;
        return;
    }
    let copies = if rng.gen_bool(faults.duplication) {
        counts.duplicated += 1;
        2
    } else {
        1
    };
    let delay = if rng.gen_bool(faults.reordering) {
        counts.reordered += 1;
        Some(Duration::from_millis(rng.gen_range(5..30)))
    } else {
        None
    };
    drop(counts);
    tokio::spawn(async move {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        for _ in 0..copies {
            send(datagram.clone()).await;
        }
    });
}
