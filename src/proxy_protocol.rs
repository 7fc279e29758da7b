//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): a load
//! balancer in front of the edges prefixes each connection with the client's real
//! address, so per-address caps and logs see the client instead of the balancer.
//!
//! - [`parse`] is sans-IO and strict: it takes the bytes received so far and says
//!   "need more", "here is the header and its length", or why the bytes are not a
//!   header. A v1 line is at most [`V1_MAX`] bytes (the spec's bound); a v2 header is
//!   16 bytes plus the length it declares (at most [`V2_MAX`], the spec's bound, since
//!   the length is 16 bits). Nothing past the header is consumed.
//! - [`ProxyTrust`] is the listener-side policy (`--proxy-protocol-from`): only
//!   connections from the listed addresses must start with a header, and for them it
//!   is mandatory (a trusted address without a valid header is closed); everyone else
//!   is taken as connected directly and never parsed.
//! - [`read_header`] is the thin async driver: reads until [`parse`] decides, within a
//!   deadline, and hands back the bytes that followed the header.
//!
//! Never knows HTTP, RTMP or the caps it feeds.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::limits::{Limit, Permit};

/// The longest v1 line, `PROXY UNKNOWN <39> <39> <5> <5>\r\n` (spec, section 2.1).
pub(crate) const V1_MAX: usize = 107;
/// The 12-byte signature that opens every v2 header.
pub(crate) const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v2 header's fixed part: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;
/// The longest v2 header: the fixed part plus a 16-bit length.
pub(crate) const V2_MAX: usize = V2_FIXED + u16::MAX as usize;
/// How long a trusted connection may take to deliver its whole header. A load balancer
/// sends it with (or before) the client's first bytes, so this only ever expires for a
/// connection that is not a balancer's.
pub(crate) const HEADER_DEADLINE: Duration = Duration::from_secs(5);
/// Connections from trusted balancers whose header has not arrived yet, at most; more
/// are closed at accept (their bytes are not yet attributed to any client, so they are
/// capped as a class of their own, not per client).
pub(crate) const MAX_PENDING_HEADERS: usize = 1024;

/// What a valid header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyHeader {
    /// A relayed connection: the client's address and the address it connected to.
    Proxied { source: SocketAddr, destination: SocketAddr },
    /// v2 `LOCAL` (the balancer's own health check) or v1 `UNKNOWN`, or a v2 family
    /// this server does not relay (UDP, UNIX): the connection's own address stands.
    Local,
}

impl ProxyHeader {
    /// The client's address: the carried source, or `peer` when the header carries none.
    pub(crate) fn client(&self, peer: SocketAddr) -> SocketAddr {
        match self {
            ProxyHeader::Proxied { source, .. } => *source,
            ProxyHeader::Local => peer,
        }
    }
}

/// Where [`parse`] stands on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A valid prefix of a header: more bytes are needed.
    Incomplete,
    /// A whole header in the first `len` bytes.
    Done { header: ProxyHeader, len: usize },
}

/// Why bytes are not a PROXY header. The connection that sent them is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProxyError {
    /// Neither the v1 `PROXY ` prefix nor the v2 signature.
    #[error("no PROXY protocol header")]
    NotProxy,
    /// A v1 line longer than the spec's 107 bytes.
    #[error("PROXY v1 line longer than {V1_MAX} bytes")]
    Oversized,
    /// A v1 line that does not follow the grammar.
    #[error("bad PROXY v1 line: {0}")]
    BadV1(&'static str),
    /// A v2 header with a bad version, command, family or address block.
    #[error("bad PROXY v2 header: {0}")]
    BadV2(&'static str),
    /// The connection ended or failed before the header was complete.
    #[error("connection ended within the PROXY header: {0}")]
    Io(String),
    /// The header did not arrive within [`HEADER_DEADLINE`].
    #[error("no PROXY header within {0:?}")]
    TimedOut(Duration),
}

/// Parses the header at the start of `buf` (sans-IO; never reads past the header).
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    const V1_PREFIX: &[u8] = b"PROXY ";
    let signature: &[u8] = match buf.first() {
        None => return Ok(Parsed::Incomplete),
        Some(b'\r') => &V2_SIGNATURE,
        Some(b'P') => V1_PREFIX,
        Some(_) => return Err(ProxyError::NotProxy),
    };
    let n = buf.len().min(signature.len());
    if buf[..n] != signature[..n] {
        return Err(ProxyError::NotProxy);
    }
    if n < signature.len() {
        return Ok(Parsed::Incomplete);
    }
    if signature == V1_PREFIX {
        parse_v1(buf)
    } else {
        parse_v2(buf)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::Oversized);
        }
        if window.contains(&b'\n') {
            return Err(ProxyError::BadV1("a bare LF"));
        }
        return Ok(Parsed::Incomplete);
    };
    if cr + 2 > V1_MAX {
        return Err(ProxyError::Oversized);
    }
    match buf.get(cr + 1) {
        None => return Ok(Parsed::Incomplete),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::BadV1("a CR not followed by LF")),
    }
    let len = cr + 2;
    // A LF before the CRLF is a bare LF whether or not the CRLF has arrived yet, so a
    // header and its prefixes get the same verdict (found by the fuzz target: an
    // `UNKNOWN` line with a LF in it parsed whole, while its prefix was an error).
    if buf[..cr].contains(&b'\n') {
        return Err(ProxyError::BadV1("a bare LF"));
    }
    let line = std::str::from_utf8(&buf[..cr]).map_err(|_| ProxyError::BadV1("not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY", checked by the caller
    let header = match fields.next() {
        // "UNKNOWN" may be followed by anything up to the CRLF (the spec).
        Some("UNKNOWN") => ProxyHeader::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let v4 = family == "TCP4";
            let mut next = |what| fields.next().filter(|f| !f.is_empty()).ok_or(ProxyError::BadV1(what));
            let (src, dst, sport, dport) =
                (next("no source")?, next("no destination")?, next("no source port")?, next("no destination port")?);
            if fields.next().is_some() {
                return Err(ProxyError::BadV1("extra fields"));
            }
            let ip = |s: &str| -> Result<IpAddr, ProxyError> {
                if v4 {
                    s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| ProxyError::BadV1("bad IPv4 address"))
                } else {
                    s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| ProxyError::BadV1("bad IPv6 address"))
                }
            };
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                destination: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        _ => return Err(ProxyError::BadV1("unknown protocol family")),
    };
    Ok(Parsed::Done { header, len })
}

/// A v1 port: 1 to 5 decimal digits, no leading zero (other than "0"), at most 65535.
fn port(s: &str) -> Result<u16, ProxyError> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(ProxyError::BadV1("bad port"));
    }
    s.parse().map_err(|_| ProxyError::BadV1("port above 65535"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Incomplete);
    }
    let (ver_cmd, fam, declared) = (buf[12], buf[13], u16::from_be_bytes([buf[14], buf[15]]) as usize);
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadV2("version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::BadV2("unknown command")),
    };
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > 3 || transport > 2 {
        return Err(ProxyError::BadV2("unknown address family or transport"));
    }
    let len = V2_FIXED + declared;
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[V2_FIXED..len];
    // LOCAL: the balancer's own connection (health checks); addresses are ignored.
    // Only TCP over IPv4/IPv6 carries a client this server can count.
    if local || transport != 1 || !(family == 1 || family == 2) {
        if !local && (family == 0) != (transport == 0) {
            return Err(ProxyError::BadV2("UNSPEC mixed with a real family"));
        }
        return Ok(Parsed::Done { header: ProxyHeader::Local, len });
    }
    let header = if family == 1 {
        let b: &[u8; 12] =
            body.get(..12).and_then(|b| b.try_into().ok()).ok_or(ProxyError::BadV2("short IPv4 block"))?;
        let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]));
        ProxyHeader::Proxied {
            source: SocketAddr::new(ip(0), u16::from_be_bytes([b[8], b[9]])),
            destination: SocketAddr::new(ip(4), u16::from_be_bytes([b[10], b[11]])),
        }
    } else {
        let b: &[u8; 36] =
            body.get(..36).and_then(|b| b.try_into().ok()).ok_or(ProxyError::BadV2("short IPv6 block"))?;
        let ip = |o: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[o..o + 16]);
            IpAddr::V6(Ipv6Addr::from(a))
        };
        ProxyHeader::Proxied {
            source: SocketAddr::new(ip(0), u16::from_be_bytes([b[32], b[33]])),
            destination: SocketAddr::new(ip(16), u16::from_be_bytes([b[34], b[35]])),
        }
    };
    // What follows the address block is TLVs (ALPN, authority, CRC, …): skipped, they
    // are within the declared length.
    Ok(Parsed::Done { header, len })
}

/// What must hold for any input, checked by the fuzz target and the tests: [`parse`]
/// never panics; a header it finds lies within the input and the spec's bounds; the
/// header alone parses the same; every shorter prefix of it asks for more.
pub fn check_invariants(data: &[u8]) {
    if let Ok(Parsed::Done { header, len }) = parse(data) {
        assert!(len <= data.len() && len <= V2_MAX, "a header of {len} bytes in {} bytes", data.len());
        assert_eq!(parse(&data[..len]), Ok(Parsed::Done { header, len }));
        for cut in 0..len {
            assert_eq!(parse(&data[..cut]), Ok(Parsed::Incomplete), "prefix of {cut} bytes");
        }
    }
}

/// The balancers a listener trusts to speak the PROXY protocol (`--proxy-protocol-from`).
#[derive(Debug)]
pub(crate) struct ProxyTrust {
    from: HashSet<IpAddr>,
    /// Connections from them whose header is still being read.
    pending: Arc<Limit>,
}

impl ProxyTrust {
    /// Trusts exactly `from` (IPv4-mapped IPv6 addresses count as IPv4).
    pub(crate) fn new(from: impl IntoIterator<Item = IpAddr>) -> Arc<ProxyTrust> {
        Arc::new(ProxyTrust {
            from: from.into_iter().map(canonical).collect(),
            pending: Limit::new("proxy_headers", MAX_PENDING_HEADERS, MAX_PENDING_HEADERS),
        })
    }

    /// Whether connections from `peer` must start with a PROXY header.
    pub(crate) fn trusts(&self, peer: IpAddr) -> bool {
        self.from.contains(&canonical(peer))
    }

    /// A slot to read one header from `peer` in, or `None` when too many are pending.
    pub(crate) fn pending(&self, peer: IpAddr) -> Option<Permit> {
        self.pending.try_acquire(peer).ok()
    }

    /// The cap on headers being read, for `/metrics`.
    pub(crate) fn limit(&self) -> &Arc<Limit> {
        &self.pending
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Reads a PROXY header from `io` within `deadline` (the listeners use
/// [`HEADER_DEADLINE`]): the header and the bytes that arrived after it (the client's
/// first bytes, to be handed to its protocol).
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
    deadline: Duration,
) -> Result<(ProxyHeader, BytesMut), ProxyError> {
    let work = async {
        // Enough for any v1 line and any v2 header without TLVs in one read.
        let mut buf = BytesMut::with_capacity(256);
        loop {
            if let Parsed::Done { header, len } = parse(&buf)? {
                buf.advance(len);
                return Ok((header, buf));
            }
            if buf.len() >= V2_MAX {
                return Err(ProxyError::BadV2("longer than the spec allows"));
            }
            buf.reserve(1024);
            let n = io.read_buf(&mut buf).await.map_err(|e| ProxyError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ProxyError::Io("closed".to_owned()));
            }
        }
    };
    tokio::time::timeout(deadline, work).await.map_err(|_| ProxyError::TimedOut(deadline))?
}

/// A stream that yields `prefix` (bytes read past a PROXY header) before the rest.
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Prefixed<S> {
    /// The stream under the prefix.
    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    pub(crate) fn new(prefix: BytesMut, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[ver_cmd, fam]);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_tcp4() -> Vec<u8> {
        // 192.0.2.7:51000 -> 127.0.0.1:8081, as HAProxy's send-proxy-v2 writes it.
        v2(0x21, 0x11, &[192, 0, 2, 7, 127, 0, 0, 1, 0xc7, 0x38, 0x1f, 0x91])
    }

    #[test]
    fn valid_v1_lines() {
        let line = b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 8081\r\nGET / HTTP/1.1\r\n";
        let want = ProxyHeader::Proxied { source: sa("192.0.2.7:51000"), destination: sa("127.0.0.1:8081") };
        assert_eq!(parse(line), Ok(Parsed::Done { header: want, len: 43 }));
        let line = b"PROXY TCP6 2001:db8::1 ::1 65535 1935\r\n";
        let want = ProxyHeader::Proxied { source: sa("[2001:db8::1]:65535"), destination: sa("[::1]:1935") };
        assert_eq!(parse(line), Ok(Parsed::Done { header: want, len: line.len() }));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Parsed::Done { header: ProxyHeader::Local, len: 15 }));
        let unknown = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest";
        assert_eq!(parse(unknown), Ok(Parsed::Done { header: ProxyHeader::Local, len: unknown.len() - 4 }));
        // The longest legal line is exactly 107 bytes (the spec's worst case).
        let longest = format!("PROXY UNKNOWN {0} {0} 65535 65535\r\n", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert_eq!(longest.len(), V1_MAX);
        assert!(matches!(parse(longest.as_bytes()), Ok(Parsed::Done { len: V1_MAX, .. })));
    }

    #[test]
    fn valid_v2_headers() {
        let mut h = v2_tcp4();
        let len = h.len();
        h.extend_from_slice(b"\x03\x00\x00\x00\x00\x00"); // client bytes after the header
        let want = ProxyHeader::Proxied { source: sa("192.0.2.7:51000"), destination: sa("127.0.0.1:8081") };
        assert_eq!(parse(&h), Ok(Parsed::Done { header: want, len }));
        let mut body = vec![0u8; 36];
        body[0] = 0x20;
        body[1] = 0x01;
        body[15] = 1;
        body[31] = 1;
        body[32..34].copy_from_slice(&443u16.to_be_bytes());
        body[34..36].copy_from_slice(&8081u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x02, 0xab, 0xcd]); // a NOOP TLV, skipped
        let h = v2(0x21, 0x21, &body);
        let want = ProxyHeader::Proxied { source: sa("[2001::1]:443"), destination: sa("[::1]:8081") };
        assert_eq!(parse(&h), Ok(Parsed::Done { header: want, len: h.len() }));
        // LOCAL (health checks) and UNSPEC carry no client.
        assert_eq!(parse(&v2(0x20, 0x00, &[])), Ok(Parsed::Done { header: ProxyHeader::Local, len: 16 }));
        let local = v2(0x20, 0x11, &[1; 12]);
        assert_eq!(parse(&local), Ok(Parsed::Done { header: ProxyHeader::Local, len: 28 }));
        assert_eq!(ProxyHeader::Local.client(sa("127.0.0.1:9")), sa("127.0.0.1:9"));
    }

    #[test]
    fn truncated_headers_ask_for_more() {
        for whole in [b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 8081\r\n".to_vec(), v2_tcp4()] {
            for cut in 0..whole.len() {
                assert_eq!(parse(&whole[..cut]), Ok(Parsed::Incomplete), "{cut} bytes of {whole:?}");
            }
        }
    }

    #[test]
    fn garbage_is_refused() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"\x03\x00\x00\x00",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
        ];
        for b in bad {
            assert!(parse(b).is_err(), "{:?} parsed", String::from_utf8_lossy(b));
        }
        let bad_v2 = [
            v2(0x11, 0x11, &[0; 12]), // version 1 in a v2 header
            v2(0x22, 0x11, &[0; 12]), // command 2
            v2(0x21, 0x41, &[0; 12]), // family 4
            v2(0x21, 0x13, &[0; 12]), // transport 3
            v2(0x21, 0x11, &[0; 11]), // short IPv4 block
            v2(0x21, 0x21, &[0; 35]), // short IPv6 block
            v2(0x21, 0x01, &[]),      // UNSPEC family with TCP
        ];
        for h in &bad_v2 {
            assert!(parse(h).is_err(), "{h:?} parsed");
        }
    }

    #[test]
    fn oversized_headers_are_refused() {
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX));
        assert_eq!(parse(long.as_bytes()), Err(ProxyError::Oversized));
        // Without a line end within 107 bytes: refused as soon as 107 arrived.
        let endless = format!("PROXY TCP4 {}", "1".repeat(200));
        assert_eq!(parse(&endless.as_bytes()[..V1_MAX - 1]), Ok(Parsed::Incomplete));
        assert_eq!(parse(&endless.as_bytes()[..V1_MAX]), Err(ProxyError::Oversized));
        // A CR as the 107th byte leaves no room for the LF.
        let cr_last = format!("PROXY UNKNOWN {}\r", "x".repeat(V1_MAX - 15));
        assert_eq!(cr_last.len(), V1_MAX);
        assert_eq!(parse(cr_last.as_bytes()), Err(ProxyError::Oversized));
        // v2: the declared length bounds the header; the largest is still read whole.
        let mut big = v2(0x21, 0x11, &vec![0u8; u16::MAX as usize]);
        assert!(matches!(parse(&big), Ok(Parsed::Done { len: V2_MAX, .. })));
        big.truncate(V2_MAX - 1);
        assert_eq!(parse(&big), Ok(Parsed::Incomplete));
    }

    #[tokio::test]
    async fn the_driver_keeps_what_follows_and_has_a_deadline() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut h = v2_tcp4();
        h.extend_from_slice(b"GET /");
        tokio::io::AsyncWriteExt::write_all(&mut client, &h[..10]).await.unwrap();
        let reader = tokio::spawn(async move {
            let got = read_header(&mut server, HEADER_DEADLINE).await;
            (got, server)
        });
        tokio::io::AsyncWriteExt::write_all(&mut client, &h[10..]).await.unwrap();
        let (got, server) = reader.await.unwrap();
        let (header, rest) = got.unwrap();
        assert_eq!(header.client(sa("127.0.0.1:1")), sa("192.0.2.7:51000"));
        let mut io = Prefixed::new(rest, server);
        let mut first = [0u8; 5];
        io.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"GET /");

        let (_client, mut silent) = tokio::io::duplex(64);
        let short = Duration::from_millis(20);
        assert_eq!(read_header(&mut silent, short).await.unwrap_err(), ProxyError::TimedOut(short));
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(read_header(&mut server, short).await.unwrap_err(), ProxyError::NotProxy);
    }

    #[test]
    fn arbitrary_and_mutated_bytes_keep_the_invariants() {
        // A deterministic xorshift: random bytes, and valid headers with bytes flipped,
        // cut or extended (what the fuzz target explores, here on every test run).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds =
            [b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 8081\r\n".to_vec(), v2_tcp4(), b"PROXY UNKNOWN\r\n".to_vec()];
        for i in 0..20_000 {
            let mut data = if i % 4 == 0 {
                (0..next() % 64).map(|_| next() as u8).collect()
            } else {
                seeds[i % seeds.len()].clone()
            };
            for _ in 0..next() % 4 {
                if data.is_empty() {
                    break;
                }
                let at = (next() as usize) % data.len();
                match next() % 3 {
                    0 => data[at] = next() as u8,
                    1 => data.truncate(at),
                    _ => data.insert(at, next() as u8),
                }
            }
            check_invariants(&data);
        }
    }

    #[test]
    fn trust_is_by_exact_address() {
        let t = ProxyTrust::new(["127.0.0.1".parse().unwrap()]);
        assert!(t.trusts("127.0.0.1".parse().unwrap()));
        assert!(t.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!t.trusts("127.0.0.2".parse().unwrap()));
    }
}
