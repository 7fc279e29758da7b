//! The link's byte stream: plain TCP, or mutual TLS with the cluster CA
//! ([`crate::tls::peer`]) for clusters that span networks. Both ends split it into a
//! reading and a writing half that run apart (the origin reads and writes a link in two
//! tasks); plain TCP keeps tokio's lock-free halves.
//!
//! A TLS half may keep written bytes inside the TLS session until flushed: writers
//! flush after every batch (a no-op on plain TCP).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use crate::tls::peer::PeerTls;

/// One link connection.
pub enum LinkStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl LinkStream {
    /// The edge's side: TCP to `addr`, then (with `tls`) a handshake that presents this
    /// node's certificate and checks the origin's against the CA and `addr`.
    pub async fn connect(addr: SocketAddr, tls: Option<&PeerTls>) -> io::Result<LinkStream> {
        let socket = TcpStream::connect(addr).await?;
        let _ = socket.set_nodelay(true);
        match tls {
            None => Ok(LinkStream::Plain(socket)),
            Some(tls) => {
                let stream = tls.connector().connect(PeerTls::server_name(addr), socket).await?;
                Ok(LinkStream::Tls(Box::new(TlsStream::Client(stream))))
            }
        }
    }

    /// The origin's side over TLS: a handshake that requires a member's certificate (a
    /// plain link is `LinkStream::Plain` as accepted).
    pub(crate) async fn accept(socket: TcpStream, tls: &PeerTls) -> io::Result<LinkStream> {
        let stream = tls.acceptor().accept(socket).await?;
        Ok(LinkStream::Tls(Box::new(TlsStream::Server(stream))))
    }

    /// Splits into halves that may be used from different tasks.
    pub fn split(self) -> (LinkReader, LinkWriter) {
        match self {
            LinkStream::Plain(socket) => {
                let (r, w) = socket.into_split();
                (LinkReader::Plain(r), LinkWriter::Plain(w))
            }
            LinkStream::Tls(stream) => {
                let (r, w) = tokio::io::split(*stream);
                (LinkReader::Tls(r), LinkWriter::Tls(w))
            }
        }
    }
}

/// The reading half of a [`LinkStream`].
pub enum LinkReader {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The writing half of a [`LinkStream`]; flush after writing (TLS buffers).
pub enum LinkWriter {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

impl AsyncRead for LinkReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkReader::Plain(r) => Pin::new(r).poll_read(cx, buf),
            LinkReader::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LinkWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LinkWriter::Plain(w) => Pin::new(w).poll_write(cx, buf),
            LinkWriter::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkWriter::Plain(w) => Pin::new(w).poll_flush(cx),
            LinkWriter::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LinkWriter::Plain(w) => Pin::new(w).poll_shutdown(cx),
            LinkWriter::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
