//! A loopback TCP proxy that injects faults between kiln-node processes and the server:
//! delays (each forwarded chunk waits up to a bound), drops (new connections are reset at
//! once), resets (every open connection is torn down with a TCP RST), and pauses (nothing
//! is forwarded until the pause ends; connections stay open and stall).
#![allow(dead_code, clippy::disallowed_methods)] // Faults are timed on the wall clock.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward as is.
    Pass,
    /// Each chunk waits a pseudo-random time up to this bound.
    Delay(Duration),
    /// New connections are reset as soon as they are accepted.
    Drop,
    /// Nothing is forwarded until this instant.
    PauseUntil(Instant),
}

#[derive(Debug)]
struct Shared {
    mode: Mutex<Mode>,
    target: SocketAddr,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
}

/// A running proxy (stops when dropped).
#[derive(Debug)]
pub struct ChaosProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// A proxy on a free 127.0.0.1 port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (resets, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            target,
            resets,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
            while let Ok((client, _)) = listener.accept().await {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let s = s.clone();
                tokio::spawn(connection(s, client, seed));
            }
        });
        Self { addr, shared, task }
    }

    /// Sets the mode.
    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Resets every open connection (RST).
    pub fn reset_all(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.reset_all();
    }
}

fn mode(shared: &Shared) -> Mode {
    *shared.mode.lock().unwrap()
}

fn rst(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn connection(shared: Arc<Shared>, client: TcpStream, seed: u64) {
    if mode(&shared) == Mode::Drop {
        rst(client);
        return;
    }
    let Ok(upstream) = TcpStream::connect(shared.target).await else {
        rst(client);
        return;
    };
    let mut resets = shared.resets.subscribe();
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let up = pump(&shared, &mut cr, &mut uw, seed);
    let down = pump(&shared, &mut ur, &mut cw, seed ^ 0xdead_beef);
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = resets.changed() => {
            // Reunite and reset both sides.
            if let (Ok(c), Ok(u)) = (cr.reunite(cw), ur.reunite(uw)) {
                rst(c);
                rst(u);
            }
        }
    }
}

async fn pump(
    shared: &Shared,
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut seed: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        loop {
            match mode(shared) {
                Mode::PauseUntil(until) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Mode::Delay(max) if !max.is_zero() => {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let ms = seed % (max.as_millis() as u64 + 1);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    break;
                }
                _ => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
