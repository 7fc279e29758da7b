//! An async RTMP client over the project's sans-IO [`ClientSession`]: what the load
//! generator and the integration tests publish and play with.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::rtmp::handshake::{Handshake, Progress};
use crate::rtmp::session::{ClientConfig, ClientEvent, ClientSession};

/// How long connect, publish and play wait for the server's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(15);

/// The connection under a client: TCP, or TLS over TCP (RTMPS).
enum Socket {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A TLS client configuration trusting the CA certificates in the PEM file `ca` (e.g.
/// the bootstrap cluster's `$RAFTCAST_DATA_DIR/tls/ca.pem`), for RTMPS.
pub fn tls_client_config(ca: &std::path::Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
        roots.add(cert.with_context(|| format!("parsing {}", ca.display()))?)?;
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One RTMP client connection.
pub struct RtmpClient {
    socket: Socket,
    session: ClientSession,
    buf: BytesMut,
    events: VecDeque<ClientEvent>,
    /// Bytes read from the server so far.
    pub(crate) bytes_in: u64,
}

/// The source address of the next load connection to a loopback server: a different
/// 127.0.x.y per [`CONNECTIONS_PER_SOURCE`] connections. A load of thousands of players
/// from one process then looks like many hosts, as it would in production, and stays
/// under an edge's per-address caps (`--max-connections-per-address`, 128 by default)
/// without raising them. Loopback answers for all of 127.0.0.0/8 on Linux.
fn loopback_source(server: SocketAddr) -> Option<std::net::Ipv4Addr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    /// Connections that share one source address: well under the per-address caps.
    const CONNECTIONS_PER_SOURCE: u32 = 32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let SocketAddr::V4(v4) = server else { return None };
    if !v4.ip().is_loopback() {
        return None;
    }
    let host = NEXT.fetch_add(1, Ordering::Relaxed) / CONNECTIONS_PER_SOURCE % (250 * 250);
    Some(std::net::Ipv4Addr::new(127, 1 + (host / 250) as u8, 0, 1 + (host % 250) as u8))
}

impl RtmpClient {
    /// Connects, shakes hands and sends `connect` for `app`; returns once the server
    /// accepted it.
    pub async fn connect(addr: SocketAddr, app: &str) -> anyhow::Result<RtmpClient> {
        Self::connect_with(addr, app, None, ClientConfig::default()).await
    }

    /// Like [`connect`](Self::connect), with a receive buffer size (small: a player that
    /// reads slowly backs up quickly) and session settings.
    pub async fn connect_with(
        addr: SocketAddr,
        app: &str,
        recv_buffer: Option<u32>,
        config: ClientConfig,
    ) -> anyhow::Result<RtmpClient> {
        Self::dial(addr, app, None, recv_buffer, config).await
    }

    /// Like [`connect`](Self::connect), from the local address `source` (an attacker's
    /// own address in the chaos harness).
    pub async fn connect_from(addr: SocketAddr, app: &str, source: std::net::IpAddr) -> anyhow::Result<RtmpClient> {
        Self::dial(addr, app, Some(source), None, ClientConfig::default()).await
    }

    /// Like [`connect_with`](Self::connect_with) over TLS (RTMPS) with `tls` (see
    /// [`tls_client_config`]), checking the server's certificate for `localhost`.
    pub(crate) async fn connect_tls_with(
        addr: SocketAddr,
        app: &str,
        tls: Arc<rustls::ClientConfig>,
        config: ClientConfig,
    ) -> anyhow::Result<RtmpClient> {
        Self::dial_over(addr, app, None, None, config, Some(tls)).await
    }

    async fn dial(
        addr: SocketAddr,
        app: &str,
        source: Option<std::net::IpAddr>,
        recv_buffer: Option<u32>,
        config: ClientConfig,
    ) -> anyhow::Result<RtmpClient> {
        Self::dial_over(addr, app, source, recv_buffer, config, None).await
    }

    async fn dial_over(
        addr: SocketAddr,
        app: &str,
        source: Option<std::net::IpAddr>,
        recv_buffer: Option<u32>,
        config: ClientConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<RtmpClient> {
        let s = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        if let Some(size) = recv_buffer {
            s.set_recv_buffer_size(size)?;
        }
        if let Some(source) = source.or_else(|| loopback_source(addr).map(std::net::IpAddr::V4)) {
            s.bind(SocketAddr::new(source, 0))?;
        }
        let tcp = s.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (socket, scheme) = match tls {
            None => (Socket::Plain(tcp), "rtmp"),
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
                let connecting = tokio_rustls::TlsConnector::from(tls).connect(name, tcp);
                let stream = tokio::time::timeout(ANSWER_WAIT, connecting)
                    .await
                    .map_err(|_| anyhow!("TLS handshake timed out"))?
                    .context("TLS handshake")?;
                (Socket::Tls(Box::new(stream)), "rtmps")
            }
        };
        let mut client = RtmpClient {
            socket,
            session: ClientSession::new(config),
            buf: BytesMut::new(),
            events: VecDeque::new(),
            bytes_in: 0,
        };
        tokio::time::timeout(ANSWER_WAIT, client.handshake()).await.map_err(|_| anyhow!("handshake timed out"))??;
        client.session.connect(app, &format!("{scheme}://{addr}/{app}"))?;
        client.flush().await?;
        match client.wait(|e| matches!(e, ClientEvent::Connected | ClientEvent::ConnectRejected { .. })).await? {
            ClientEvent::Connected => Ok(client),
            other => bail!("connect refused: {other:?}"),
        }
    }

    async fn handshake(&mut self) -> anyhow::Result<()> {
        let (mut hs, c0c1) = Handshake::client()?;
        self.socket.write_all(&c0c1).await?;
        self.socket.flush().await?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self.socket.read(&mut buf).await?;
            if n == 0 {
                bail!("closed during the handshake");
            }
            match hs.feed(&buf[..n])? {
                Progress::InProgress { send } => {
                    self.socket.write_all(&send).await?;
                    self.socket.flush().await?;
                }
                Progress::Done { send, leftover } => {
                    self.socket.write_all(&send).await?;
                    self.socket.flush().await?;
                    self.buf.extend_from_slice(&leftover);
                    return Ok(());
                }
            }
        }
    }

    /// Publishes `name` (may carry `?key=…`) on a new stream; returns its stream id once
    /// the server said `NetStream.Publish.Start`, or the status code it answered.
    pub async fn publish(&mut self, name: &str) -> anyhow::Result<u32> {
        let stream_id = self.create_stream().await?;
        self.session.publish(stream_id, name)?;
        self.flush().await?;
        loop {
            match self.wait(|e| matches!(e, ClientEvent::PublishStarted { .. } | ClientEvent::Status { .. })).await? {
                ClientEvent::PublishStarted { .. } => return Ok(stream_id),
                ClientEvent::Status { code, description, level, .. } if level == "error" => {
                    return Err(StatusError { code, description }.into())
                }
                _ => {}
            }
        }
    }

    /// Plays `name` on a new stream; returns its stream id once the server said
    /// `NetStream.Play.Start`, or the status code it answered (e.g.
    /// `NetStream.Play.StreamNotFound`).
    pub async fn play(&mut self, name: &str) -> anyhow::Result<u32> {
        let stream_id = self.create_stream().await?;
        self.session.play(stream_id, name)?;
        self.flush().await?;
        loop {
            // Only this stream's statuses: one on stream 0 (a draining edge's reconnect
            // request) stays queued for `next_event`.
            let ours = |e: &ClientEvent| match e {
                ClientEvent::PlayStarted { .. } => true,
                ClientEvent::Status { stream_id: s, .. } => *s == stream_id,
                _ => false,
            };
            match self.wait(ours).await? {
                ClientEvent::PlayStarted { .. } => return Ok(stream_id),
                ClientEvent::Status { code, description, level, .. }
                    if level == "error" || code.ends_with("NotFound") =>
                {
                    return Err(StatusError { code, description }.into())
                }
                _ => {}
            }
        }
    }

    async fn create_stream(&mut self) -> anyhow::Result<u32> {
        self.session.create_stream()?;
        self.flush().await?;
        match self.wait(|e| matches!(e, ClientEvent::StreamCreated { .. } | ClientEvent::CallFailed { .. })).await? {
            ClientEvent::StreamCreated { stream_id } => Ok(stream_id),
            other => bail!("createStream failed: {other:?}"),
        }
    }

    /// Waits for the first event matching `want`; other events stay queued in order.
    async fn wait(&mut self, want: impl Fn(&ClientEvent) -> bool) -> anyhow::Result<ClientEvent> {
        let work = async {
            loop {
                if let Some(i) = self.events.iter().position(&want) {
                    return Ok(self.events.remove(i).expect("present"));
                }
                if !self.read_more().await? {
                    bail!("the server closed the connection");
                }
            }
        };
        tokio::time::timeout(ANSWER_WAIT, work).await.map_err(|_| anyhow!("no answer within {ANSWER_WAIT:?}"))?
    }

    /// Reads once from the socket; `false` at end of stream.
    async fn read_more(&mut self) -> anyhow::Result<bool> {
        let n = self.socket.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Ok(false);
        }
        self.bytes_in += n as u64;
        let bytes = self.buf.split();
        self.events.extend(self.session.handle_input(&bytes)?);
        self.flush().await?;
        if self.buf.capacity() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        Ok(true)
    }

    /// The next event from the server; `None` once it closed the connection.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<ClientEvent>> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// Sends a video message on a published stream.
    pub async fn send_video(&mut self, stream_id: u32, timestamp: u32, payload: Bytes) -> anyhow::Result<()> {
        self.session.send_video(stream_id, timestamp, payload)?;
        self.flush().await
    }

    /// Sends an audio message on a published stream.
    pub async fn send_audio(&mut self, stream_id: u32, timestamp: u32, payload: Bytes) -> anyhow::Result<()> {
        self.session.send_audio(stream_id, timestamp, payload)?;
        self.flush().await
    }

    /// Sends a data message (e.g. `onMetaData`) on a published stream.
    pub async fn send_data(&mut self, stream_id: u32, timestamp: u32, payload: Bytes) -> anyhow::Result<()> {
        self.session.send_data(stream_id, timestamp, payload)?;
        self.flush().await
    }

    /// Sends a shared-object message body (type 19, or type 16 when `amf3`).
    pub async fn send_shared_object(&mut self, body: Bytes, amf3: bool) -> anyhow::Result<()> {
        self.session.send_shared_object(body, amf3)?;
        self.flush().await
    }

    /// Writes raw bytes as they are (for tests of hostile or unusual input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.socket.write_all(bytes).await?;
        self.socket.flush().await?;
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        let out = self.session.take_output();
        if !out.is_empty() {
            self.socket.write_all(&out).await?;
            self.socket.flush().await?;
        }
        Ok(())
    }
}

/// A status code the server answered instead of what was asked.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {description}")]
pub struct StatusError {
    pub code: String,
    pub description: String,
}
