//! Delaying TCP proxies for the latency nemesis (`tc netem` is missing on this kernel).
//! One proxy per directed link: it accepts on the harness's bridge address, connects to
//! the real target and copies bytes both ways, holding each chunk for the current
//! delay. Order is kept; a bounded queue per direction pushes back on the sender when
//! full. The delay can change while connections run (0 after the heal).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Chunks in flight per direction of one connection; a full queue makes the reader
/// wait (the sender's TCP window fills), it never drops.
const DELAY_QUEUE: usize = 256;

/// A running proxy; stops (and cuts its connections) when dropped.
pub struct DelayProxy {
    pub addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    _tasks: JoinSet<()>,
}

impl DelayProxy {
    /// Listens on `bind` (port chosen by the kernel) and forwards to `target`.
    pub async fn start(bind: IpAddr, target: SocketAddr, delay_ms: u64) -> anyhow::Result<DelayProxy> {
        let listener = TcpListener::bind(SocketAddr::new(bind, 0)).await?;
        let addr = listener.local_addr()?;
        let delay = Arc::new(AtomicU64::new(delay_ms));
        let mut tasks = JoinSet::new();
        tasks.spawn(serve(listener, target, delay.clone()));
        Ok(DelayProxy { addr, delay_ms: delay, _tasks: tasks })
    }

    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed);
    }
}

async fn serve(listener: TcpListener, target: SocketAddr, delay: Arc<AtomicU64>) {
    // Dropped with this task (the proxy), so every connection ends with it.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let delay = delay.clone();
                conns.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else { return };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::join!(forward(ir, ow, delay.clone()), forward(or, iw, delay));
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Copies `r` to `w`, each chunk held until `delay` after it was read.
async fn forward(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, delay: Arc<AtomicU64>) {
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, Bytes)>(DELAY_QUEUE);
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let due = tokio::time::Instant::now() + Duration::from_millis(delay.load(Ordering::Relaxed));
            if tx.send((due, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_in_order_and_late() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let proxy = DelayProxy::start("127.0.0.1".parse().unwrap(), target, 100).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        let started = std::time::Instant::now();
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        // 100 ms each way.
        assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
        proxy.set_delay(0);
        echo.await.unwrap();
    }
}
