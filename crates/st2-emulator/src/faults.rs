//! Injected faults, so tests can see how a client copes with a sick StackStorm:
//!
//! - `http_500` `{count: N}` or `{for_ms: N}`: answer `500 {"faultstring": "Internal Server Error"}`
//!   to the next N requests, or to every request for N ms.
//! - `latency_ms: N`: delay every answer by N ms (until cleared).
//! - `refuse` `{count: N}` or `{for_ms: N}`: new TCP connections are accepted and closed at
//!   once without an answer (the next N, or all for N ms), and for `for_ms` reads on already
//!   open keep-alive connections fail, so those close too. Clients see a connection closed or
//!   reset, not a TCP-level "connection refused": the listening socket stays bound so the port
//!   cannot be taken by someone else. To get a real refusal, stop the emulator.
//!
//! Faults never apply to `/_emulator/...` requests on open connections, but `refuse` closes
//! new connections whatever they ask for: use `for_ms`/`count` so it ends by itself.

use axum::serve::Listener;
use serde_json::{json, Value};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
struct State {
    http500_left: u64,
    http500_until: Option<Instant>,
    latency_ms: u64,
    refuse_left: u64,
    refuse_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<State>,
}

/// `{count: N}` or `{for_ms: N}`.
fn count_or_window(v: &Value, name: &str) -> Result<(u64, Option<Instant>), String> {
    let bad = || format!("{name} takes {{\"count\": N}} or {{\"for_ms\": N}}");
    let obj = v.as_object().ok_or_else(bad)?;
    let mut out = (0, None);
    for (k, n) in obj {
        let n = n.as_u64().ok_or_else(bad)?;
        match k.as_str() {
            "count" => out.0 = n,
            "for_ms" => out.1 = Some(Instant::now() + Duration::from_millis(n)),
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the faults described by `body` (keys: http_500, latency_ms, refuse).
    pub fn apply(&self, body: &Value) -> Result<(), String> {
        let obj = body.as_object().ok_or("body must be a JSON object")?;
        let mut st = self.lock();
        for (k, v) in obj {
            match k.as_str() {
                "http_500" => (st.http500_left, st.http500_until) = count_or_window(v, k)?,
                "refuse" => (st.refuse_left, st.refuse_until) = count_or_window(v, k)?,
                "latency_ms" => st.latency_ms = v.as_u64().ok_or("latency_ms takes a number")?,
                other => {
                    return Err(format!(
                        "unknown fault {other:?} (http_500, latency_ms, refuse)"
                    ))
                }
            }
        }
        Ok(())
    }

    pub fn clear(&self) {
        *self.lock() = State::default();
    }

    pub fn describe(&self) -> Value {
        let st = self.lock();
        let left = |t: Option<Instant>| {
            t.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64)
        };
        json!({
            "http_500": {"count": st.http500_left, "for_ms": left(st.http500_until)},
            "latency_ms": st.latency_ms,
            "refuse": {"count": st.refuse_left, "for_ms": left(st.refuse_until)},
        })
    }

    /// True (and one count used) when this request must get a 500.
    pub fn take_http500(&self) -> bool {
        let mut st = self.lock();
        if st.http500_until.is_some_and(|t| Instant::now() < t) {
            return true;
        }
        if st.http500_left > 0 {
            st.http500_left -= 1;
            return true;
        }
        false
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.lock().latency_ms)
    }

    /// True (and one count used) when a new connection must be closed.
    fn take_refuse(&self) -> bool {
        let mut st = self.lock();
        if st.refuse_until.is_some_and(|t| Instant::now() < t) {
            return true;
        }
        if st.refuse_left > 0 {
            st.refuse_left -= 1;
            return true;
        }
        false
    }

    fn refusing_now(&self) -> bool {
        self.lock().refuse_until.is_some_and(|t| Instant::now() < t)
    }
}

/// The TCP listener, closing connections while `refuse` is on.
pub struct FaultyListener {
    pub inner: TcpListener,
    pub faults: Arc<Faults>,
}

impl Listener for FaultyListener {
    type Io = FaultIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if self.faults.take_refuse() {
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let io = FaultIo {
                        inner: stream,
                        faults: self.faults.clone(),
                    };
                    return (io, addr);
                }
                // Out of file descriptors and the like: wait a little, as axum does.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection whose reads fail while `refuse` is on, so keep-alive connections close too.
pub struct FaultIo {
    inner: TcpStream,
    faults: Arc<Faults>,
}

impl AsyncRead for FaultIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.faults.refusing_now() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
