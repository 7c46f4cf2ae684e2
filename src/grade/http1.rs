//! Examiner's own HTTP/1.1 client for plain-`http://` chat backends (vLLM, Ollama or llama.cpp's
//! server on the local network), used instead of the general client when nothing needs it.
//!
//! Why: under load the general client's machinery (a connection task per socket reached
//! through channels, header maps, a generic pool) cost several times the transport itself per
//! call (BENCHMARKS.md, "transport floor"). Here the calling task writes the request and reads
//! the reply on a pooled keep-alive socket itself, with one write and as few reads as the reply
//! needs. It does only what a chat-completions call needs: one POST with a JSON body, replies
//! framed by `Content-Length`, chunked encoding or the end of the connection, `Retry-After`.
//! HTTPS, proxies, credentials in the URL and HTTP/2 stay with the general client.
//!
//! Promises: a reply longer than the cap is refused, not buffered; a malformed reply is an error,
//! never a panic; a socket is reused only after a complete, well-framed reply; a pooled socket the
//! server closed while idle is replaced transparently, once. Timeouts are the caller's: dropping
//! the future drops the socket.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle sockets older than this are closed rather than reused (servers close theirs too).
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Largest header section accepted.
const MAX_HEAD_BYTES: usize = 64 << 10;
const MAX_HEADERS: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server answered.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    /// `retry-after-ms` and `Retry-After`, as sent.
    pub retry_after_ms: Option<String>,
    pub retry_after: Option<String>,
    /// Where a redirect points (redirects are not followed: see [`Http1Client`]'s callers).
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// Why no reply was read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Http1Error {
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Transport(String),
    #[error("response body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Malformed(String),
}

/// Where to send: fixed per backend, so the request head is mostly built once.
pub(crate) struct Http1Client {
    host: String,
    port: u16,
    /// `POST <path> HTTP/1.1` and the fixed headers, up to the per-request ones.
    head_prefix: Vec<u8>,
    max_body: usize,
    idle: Mutex<Vec<IdleSocket>>,
}

struct IdleSocket {
    stream: TcpStream,
    since: Instant,
}

/// Whether the general client is needed: proxies it would honour from the environment.
fn proxy_configured() -> bool {
    ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

impl Http1Client {
    /// A client for `url` when it is plain `http://` without credentials and no proxy is
    /// configured; `None` means the general client should be used.
    pub(crate) fn for_url(url: &reqwest::Url, max_body: usize) -> Option<Self> {
        if url.scheme() != "http"
            || !url.username().is_empty()
            || url.password().is_some()
            || proxy_configured()
        {
            return None;
        }
        let host_text = url.host_str()?;
        // An IPv6 literal is bracketed in URLs and Host headers, not for address lookup.
        let host = host_text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(port) => format!("{host_text}:{port}"),
            None => host_text.to_string(),
        };
        let mut target = url.path().to_string();
        if let Some(query) = url.query() {
            target.push('?');
            target.push_str(query);
        }
        let head_prefix = format!(
            "POST {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: examiner-grade/{}\r\n\
             Accept: application/json\r\nContent-Type: application/json\r\n",
            env!("CARGO_PKG_VERSION")
        )
        .into_bytes();
        Some(Http1Client {
            host,
            port,
            head_prefix,
            max_body,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// POSTs `body` and reads the whole reply.
    pub(crate) async fn post_json(
        &self,
        body: &[u8],
        bearer: Option<&str>,
    ) -> Result<Reply, Http1Error> {
        // A line break in the key would end the header early and start another.
        if bearer.is_some_and(|key| key.bytes().any(|b| b.is_ascii_control())) {
            return Err(Http1Error::Transport(
                "the API key contains control characters, which an HTTP header cannot carry".into(),
            ));
        }
        let mut request = Vec::with_capacity(self.head_prefix.len() + 96 + body.len());
        request.extend_from_slice(&self.head_prefix);
        if let Some(key) = bearer {
            request.extend_from_slice(b"Authorization: Bearer ");
            request.extend_from_slice(key.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"Content-Length: ");
        request.extend_from_slice(body.len().to_string().as_bytes());
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(body);

        // A pooled socket may have been closed by the server a moment ago; when such a socket
        // yields not one byte, the request is sent once more on a new one.
        loop {
            let (mut stream, reused) = match self.take_idle() {
                Some(stream) => (stream, true),
                None => (self.connect().await?, false),
            };
            match exchange(&mut stream, &request, self.max_body).await {
                Ok((reply, reusable)) => {
                    if reusable {
                        self.put_idle(stream);
                    }
                    return Ok(reply);
                }
                Err(Failure::Silent(_)) if reused => continue,
                Err(Failure::Silent(e) | Failure::Other(e)) => return Err(e),
            }
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<IdleSocket>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live socket (the least likely to have been closed).
    fn take_idle(&self) -> Option<TcpStream> {
        loop {
            let socket = self.lock_idle().pop()?;
            if socket.since.elapsed() > IDLE_LIMIT {
                continue;
            }
            // A live idle socket has nothing to read; EOF or stray bytes mean it is unusable.
            let mut probe = [0u8; 1];
            match socket.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(socket.stream),
                _ => continue,
            }
        }
    }

    fn put_idle(&self, stream: TcpStream) {
        self.lock_idle().push(IdleSocket {
            stream,
            since: Instant::now(),
        });
    }

    async fn connect(&self) -> Result<TcpStream, Http1Error> {
        let host = self.host.as_str();
        let connecting = async {
            let mut last = None;
            for address in tokio::net::lookup_host((host, self.port)).await? {
                match TcpStream::connect(address).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address found")
            }))
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                Http1Error::Connect(format!(
                    "connect timed out after {}s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| Http1Error::Connect(e.to_string()))?;
        // Requests are written whole; waiting to coalesce them would only add latency.
        stream
            .set_nodelay(true)
            .map_err(|e| Http1Error::Connect(e.to_string()))?;
        Ok(stream)
    }
}

/// How an exchange failed: `Silent` when the server sent nothing at all.
enum Failure {
    Silent(Http1Error),
    Other(Http1Error),
}

/// Writes the request and reads one reply; says whether the socket can carry another.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    max_body: usize,
) -> Result<(Reply, bool), Failure> {
    let transport = |e: std::io::Error| Http1Error::Transport(e.to_string());
    stream
        .write_all(request)
        .await
        .map_err(|e| Failure::Silent(transport(e)))?;
    let mut buf: Vec<u8> = Vec::with_capacity(8 << 10);
    loop {
        let head = loop {
            if let Some(head) = parse_head(&buf).map_err(Failure::Other)? {
                break head;
            }
            if buf.len() > MAX_HEAD_BYTES {
                return Err(Failure::Other(Http1Error::Malformed(format!(
                    "response headers exceed {MAX_HEAD_BYTES} bytes"
                ))));
            }
            let silent = buf.is_empty();
            let failure = |e| {
                if silent {
                    Failure::Silent(e)
                } else {
                    Failure::Other(e)
                }
            };
            let n = read_more(stream, &mut buf)
                .await
                .map_err(|e| failure(transport(e)))?;
            if n == 0 {
                return Err(failure(Http1Error::Transport(
                    "connection closed before a complete response".into(),
                )));
            }
        };
        buf.drain(..head.length);
        // Interim replies (100 Continue, 103 Early Hints) precede the real one.
        if (100..200).contains(&head.status) && head.status != 101 {
            continue;
        }
        let (body, reusable) = read_body(stream, buf, &head, max_body)
            .await
            .map_err(Failure::Other)?;
        let reply = Reply {
            status: head.status,
            retry_after_ms: head.retry_after_ms,
            retry_after: head.retry_after,
            location: head.location,
            body,
        };
        return Ok((reply, reusable && head.keep_alive));
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(buf.capacity().max(8 << 10));
    }
    stream.read_buf(buf).await
}

/// How the body is delimited.
#[derive(Debug, PartialEq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

#[derive(Debug)]
struct Head {
    length: usize,
    status: u16,
    framing: Framing,
    keep_alive: bool,
    retry_after_ms: Option<String>,
    retry_after: Option<String>,
    location: Option<String>,
}

/// The response head, once all of it has arrived.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Http1Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Http1Error::Malformed(format!("invalid response head: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    let mut keep_alive = response.version == Some(1);
    let mut content_length = None;
    let mut chunked = false;
    let (mut retry_after_ms, mut retry_after, mut location) = (None, None, None);
    for header in response.headers.iter() {
        let value = || String::from_utf8_lossy(header.value).trim().to_string();
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = value().parse::<usize>().map_err(|_| {
                Http1Error::Malformed(format!("invalid Content-Length {:?}", value()))
            })?;
            if content_length.is_some_and(|known| known != parsed) {
                return Err(Http1Error::Malformed(
                    "conflicting Content-Length headers".into(),
                ));
            }
            content_length = Some(parsed);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only chunked: other codings (gzip...) were not asked for.
            let value = value().to_ascii_lowercase();
            if value != "chunked" {
                return Err(Http1Error::Malformed(format!(
                    "unsupported transfer coding {value:?}"
                )));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value().to_ascii_lowercase();
            if value.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if value.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("retry-after-ms") {
            retry_after_ms = Some(value());
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = Some(value());
        } else if name.eq_ignore_ascii_case("location") {
            location = Some(value());
        }
    }
    let framing = if matches!(status, 204 | 304) || (100..200).contains(&status) {
        Framing::Length(0)
    } else if chunked {
        // Chunked wins over a Content-Length (RFC 9112 §6.3); such a socket is not reused.
        if content_length.is_some() {
            keep_alive = false;
        }
        Framing::Chunked
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Some(Head {
        length,
        status,
        framing,
        keep_alive,
        retry_after_ms,
        retry_after,
        location,
    }))
}

/// Reads the body after the head; `buf` holds what already arrived beyond the head. Returns the
/// body and whether the socket ended exactly at its end (so it can be reused).
async fn read_body(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    head: &Head,
    max_body: usize,
) -> Result<(Vec<u8>, bool), Http1Error> {
    let transport = |e: std::io::Error| Http1Error::Transport(e.to_string());
    let truncated = || Http1Error::Transport("connection closed in the middle of the body".into());
    match head.framing {
        Framing::Length(n) => {
            if n > max_body {
                return Err(Http1Error::TooLarge(max_body));
            }
            while buf.len() < n {
                if read_more(stream, &mut buf).await.map_err(transport)? == 0 {
                    return Err(truncated());
                }
            }
            // Bytes beyond the body were never asked for: do not trust the socket again.
            let clean = buf.len() == n;
            buf.truncate(n);
            Ok((buf, clean))
        }
        Framing::UntilClose => {
            loop {
                if buf.len() > max_body {
                    return Err(Http1Error::TooLarge(max_body));
                }
                if read_more(stream, &mut buf).await.map_err(transport)? == 0 {
                    break;
                }
            }
            Ok((buf, false))
        }
        Framing::Chunked => {
            let mut body = Vec::with_capacity(buf.len());
            let mut at = 0;
            loop {
                match decode_chunks(&buf[at..], &mut body, max_body)? {
                    Decoded::Done { consumed } => {
                        let clean = at + consumed == buf.len();
                        return Ok((body, clean));
                    }
                    Decoded::NeedMore { consumed } => at += consumed,
                }
                // What is pending is at most one chunk and its size line: endless size lines,
                // extensions or trailers are refused like an oversized body.
                if buf.len() - at > max_body.saturating_add(MAX_HEAD_BYTES) {
                    return Err(Http1Error::TooLarge(max_body));
                }
                if read_more(stream, &mut buf).await.map_err(transport)? == 0 {
                    return Err(truncated());
                }
            }
        }
    }
}

enum Decoded {
    /// The last chunk and the trailers were read; `consumed` bytes of the input were used.
    Done { consumed: usize },
    /// Every complete chunk was appended; more input is needed from `consumed` on.
    NeedMore { consumed: usize },
}

/// Appends the complete chunks at the start of `input` to `body`.
fn decode_chunks(input: &[u8], body: &mut Vec<u8>, max_body: usize) -> Result<Decoded, Http1Error> {
    let mut at = 0;
    loop {
        let (size_len, size) = match httparse::parse_chunk_size(&input[at..]) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore { consumed: at }),
            Err(_) => return Err(Http1Error::Malformed("invalid chunk size".into())),
        };
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| body.len().saturating_add(s) <= max_body)
            .ok_or(Http1Error::TooLarge(max_body))?;
        let data = at + size_len;
        if size == 0 {
            // Trailers (usually none) end with an empty line.
            return match find_trailer_end(&input[data..]) {
                Some(end) => Ok(Decoded::Done {
                    consumed: data + end,
                }),
                None => Ok(Decoded::NeedMore { consumed: at }),
            };
        }
        if input.len() < data + size + 2 {
            return Ok(Decoded::NeedMore { consumed: at });
        }
        if &input[data + size..data + size + 2] != b"\r\n" {
            return Err(Http1Error::Malformed("chunk not followed by CRLF".into()));
        }
        body.extend_from_slice(&input[data..data + size]);
        at = data + size + 2;
    }
}

/// Where the trailer section after the last chunk ends (just past its empty line).
fn find_trailer_end(input: &[u8]) -> Option<usize> {
    if input.starts_with(b"\r\n") {
        return Some(2);
    }
    input
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|position| position + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::net::TcpListener;

    /// A raw TCP server: per connection, reads requests and answers each with the next
    /// scripted bytes; `close_after` closes the connection after that many replies.
    async fn serve(replies: Vec<Vec<u8>>, close_after: usize) -> (reqwest::Url, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = reqwest::Url::parse(&format!(
            "http://{}/v1/chat/completions",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let replies = Arc::new(replies);
        let next = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (replies, next) = (replies.clone(), next.clone());
                tokio::spawn(async move {
                    for _ in 0..close_after {
                        if read_request(&mut socket).await.is_none() {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let reply = &replies[i.min(replies.len() - 1)];
                        if socket.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, connections)
    }

    /// Reads one request (head and Content-Length body); `None` at EOF.
    async fn read_request(socket: &mut TcpStream) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(length)) = request.parse(&buf) {
                let body_length: usize = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                    .unwrap_or(0);
                while buf.len() < length + body_length {
                    if socket.read_buf(&mut buf).await.ok()? == 0 {
                        return None;
                    }
                }
                return Some(buf);
            }
            if socket.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn replies_framed_by_length_reuse_one_connection() {
        let (url, connections) = serve(vec![ok("{\"a\":1}")], usize::MAX).await;
        let client = Http1Client::for_url(&url, 1 << 20).unwrap();
        for _ in 0..3 {
            let reply = client.post_json(b"{}", Some("k")).await.unwrap();
            assert_eq!(
                (reply.status, reply.body.as_slice()),
                (200, &b"{\"a\":1}"[..])
            );
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_request_carries_host_path_key_and_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let request = read_request(&mut socket).await.unwrap();
            socket.write_all(&ok("{}")).await.unwrap();
            String::from_utf8(request).unwrap()
        });
        let url =
            reqwest::Url::parse(&format!("http://{address}/v1/chat/completions?x=1")).unwrap();
        let client = Http1Client::for_url(&url, 1 << 20).unwrap();
        client
            .post_json(b"{\"q\":\"\xc3\xa9\"}", Some("sk-1"))
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /v1/chat/completions?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("\r\nHost: {address}\r\n")),
            "{request}"
        );
        assert!(
            request.contains("\r\nAuthorization: Bearer sk-1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nContent-Length: 10\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n{\"q\":\"é\"}"), "{request}");
    }

    #[tokio::test]
    async fn chunked_replies_are_decoded_even_when_split_across_reads() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        4\r\n{\"a\"\r\nA;ext=1\r\n:\"0123456\"\r\n1\r\n}\r\n0\r\n\r\n"
            .to_vec();
        let (url, connections) = serve(vec![chunked], usize::MAX).await;
        let client = Http1Client::for_url(&url, 1 << 20).unwrap();
        for _ in 0..2 {
            let reply = client.post_json(b"{}", None).await.unwrap();
            assert_eq!(
                String::from_utf8(reply.body).unwrap(),
                "{\"a\":\"0123456\"}"
            );
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the socket is reused"
        );

        // Every split point of the encoded body decodes to the same bytes.
        let encoded = b"4\r\n{\"a\"\r\nA;ext=1\r\n:\"0123456\"\r\n1\r\n}\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..encoded.len() {
            let mut body = Vec::new();
            let consumed = match decode_chunks(&encoded[..split], &mut body, 1 << 20).unwrap() {
                Decoded::NeedMore { consumed } => consumed,
                Decoded::Done { .. } => panic!("done before the end at {split}"),
            };
            match decode_chunks(&encoded[consumed..], &mut body, 1 << 20).unwrap() {
                Decoded::Done { consumed: rest } => assert_eq!(consumed + rest, encoded.len()),
                Decoded::NeedMore { .. } => panic!("not done at {split}"),
            }
            assert_eq!(body, b"{\"a\":\"0123456\"}", "split at {split}");
        }
    }

    #[tokio::test]
    async fn a_reply_without_length_is_read_to_the_close_and_the_socket_dropped() {
        let reply = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nretry-after-ms: 1500\r\nLocation: /elsewhere\r\n\r\nbusy".to_vec();
        let (url, connections) = serve(vec![reply], 1).await;
        let client = Http1Client::for_url(&url, 1 << 20).unwrap();
        for _ in 0..2 {
            let reply = client.post_json(b"{}", None).await.unwrap();
            assert_eq!(reply.status, 503);
            assert_eq!(reply.body, b"busy");
            assert_eq!(reply.retry_after.as_deref(), Some("2"));
            assert_eq!(reply.retry_after_ms.as_deref(), Some("1500"));
            assert_eq!(reply.location.as_deref(), Some("/elsewhere"));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_pooled_socket_the_server_closed_is_replaced() {
        // An open idle socket is handed out again.
        let (url, _) = serve(vec![ok("{}")], usize::MAX).await;
        let client = Http1Client::for_url(&url, 1 << 20).unwrap();
        client.post_json(b"{}", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(client.take_idle().is_some());

        // The server closes every connection after one reply, as an idle timeout would: the
        // probe sees the close, so the next request goes out on a new socket.
        let (url, connections) = serve(vec![ok("{\"n\":1}")], 1).await;
        let client = Http1Client::for_url(&url, 1 << 20).unwrap();
        for _ in 0..3 {
            let reply = client.post_json(b"{}", None).await.unwrap();
            assert_eq!(reply.body, b"{\"n\":1}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                client.lock_idle().len(),
                1,
                "the socket went back to the pool"
            );
        }
        assert!(
            client.take_idle().is_none(),
            "a closed socket is not handed out"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_close_right_after_the_request_is_retried_on_a_new_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // First connection: answer once, then read the next request and close unanswered,
            // as a server whose idle timeout fires just as the request arrives.
            let (mut first, _) = listener.accept().await.unwrap();
            read_request(&mut first).await.unwrap();
            first.write_all(&ok("{\"n\":1}")).await.unwrap();
            read_request(&mut first).await.unwrap();
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            read_request(&mut second).await.unwrap();
            second.write_all(&ok("{\"n\":2}")).await.unwrap();
            let _ = read_request(&mut second).await;
        });
        let url = reqwest::Url::parse(&format!("http://{address}/v1/chat/completions")).unwrap();
        let client = Http1Client::for_url(&url, 1 << 20).unwrap();
        assert_eq!(
            client.post_json(b"{}", None).await.unwrap().body,
            b"{\"n\":1}"
        );
        assert_eq!(
            client.post_json(b"{}", None).await.unwrap().body,
            b"{\"n\":2}"
        );
    }

    #[tokio::test]
    async fn a_fresh_socket_closed_without_a_reply_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let _ = read_request(&mut socket).await;
            }
        });
        let url = reqwest::Url::parse(&format!("http://{address}/v1")).unwrap();
        let client = Http1Client::for_url(&url, 1 << 20).unwrap();
        let err = client.post_json(b"{}", None).await.unwrap_err();
        assert!(matches!(err, Http1Error::Transport(_)), "{err:?}");
    }

    #[tokio::test]
    async fn oversized_and_malformed_replies_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (ok(&"x".repeat(100)), "exceeds 64 bytes"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n".to_vec(),
                "exceeds 64 bytes",
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n"
                    .iter()
                    .chain([b'y'; 100].iter())
                    .copied()
                    .collect(),
                "exceeds 64 bytes",
            ),
            (
                [
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;".as_slice(),
                    &[b'e'; 70_000],
                ]
                .concat(),
                "exceeds 64 bytes",
            ),
            (b"SMTP ready\r\n\r\n".to_vec(), "invalid response head"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n".to_vec(),
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n".to_vec(),
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
                "unsupported transfer coding",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                "invalid chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec(),
                "middle of the body",
            ),
        ];
        for (reply, expected) in cases {
            let (url, _) = serve(vec![reply.clone()], 1).await;
            let client = Http1Client::for_url(&url, 64).unwrap();
            let err = client.post_json(b"{}", None).await.unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{:?}: {err}",
                String::from_utf8_lossy(&reply)
            );
        }
    }

    #[tokio::test]
    async fn a_key_that_would_split_the_header_is_refused_before_sending() {
        let (url, connections) = serve(vec![ok("{}")], usize::MAX).await;
        let client = Http1Client::for_url(&url, 1 << 20).unwrap();
        let err = client
            .post_json(b"{}", Some("sk-1\r\nX-Injected: 1"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("control characters"), "{err}");
        assert_eq!(connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn interim_replies_are_skipped() {
        let reply = [b"HTTP/1.1 100 Continue\r\n\r\n".as_slice(), &ok("{}")].concat();
        let (url, _) = serve(vec![reply], usize::MAX).await;
        let client = Http1Client::for_url(&url, 1 << 20).unwrap();
        let reply = client.post_json(b"{}", None).await.unwrap();
        assert_eq!((reply.status, reply.body.as_slice()), (200, &b"{}"[..]));
    }

    #[test]
    fn only_plain_http_without_credentials_is_taken() {
        let take =
            |url: &str| Http1Client::for_url(&reqwest::Url::parse(url).unwrap(), 1).is_some();
        if !proxy_configured() {
            assert!(take("http://127.0.0.1:8000/v1/chat/completions"));
            assert!(take("http://[::1]:8000/v1/chat/completions"));
            assert!(take("http://llm.internal/v1/chat/completions"));
        }
        assert!(!take("https://api.openai.com/v1/chat/completions"));
        assert!(!take("http://user:pw@127.0.0.1:8000/v1/chat/completions"));
    }
}
