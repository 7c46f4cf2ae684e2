//! Fetching answer images (and scanned PDFs) from the URLs users give: `http`, `https` and
//! `data:`.
//!
//! The fetcher promises that what it returns is a complete image of a supported type
//! (PNG, JPEG, TIFF, WebP, BMP, GIF) or a PDF, as sniffed from the bytes (never trusted
//! from headers), no larger than the per-image cap, that all images of one request together stay under
//! the per-request cap, and that it never connected to an address the [`AddressGuard`]
//! refuses — including after redirects. Connections are pooled and bounded by a
//! service-wide semaphore; every fetch has connect and total timeouts.

mod guard;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

pub use guard::{is_public, AddressGuard};

use crate::config::FetchSettings;

/// An image (or PDF) fetched and checked.
#[derive(Debug, Clone)]
pub struct FetchedImage {
    pub bytes: Bytes,
    /// MIME type sniffed from the bytes (`application/pdf` for a PDF).
    pub media_type: &'static str,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// The URL as it should be stored (a `data:` URL is summarised, not copied).
    pub stored_url: String,
}

/// Why an image could not be fetched. Variants say whose fault it was: the URL given
/// (the caller's) or the remote server's.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("is not a valid URL: {0}")]
    InvalidUrl(String),
    #[error("uses the unsupported scheme {0:?}; use http, https or data")]
    UnsupportedScheme(String),
    #[error("points to {host}, a private, loopback or otherwise non-public address; such URLs are refused unless the host is listed in fetch.allow_hosts")]
    Blocked { host: String },
    #[error("could not be fetched: the server answered HTTP {status}")]
    Status { status: u16 },
    #[error("is larger than the {limit}-byte limit per image")]
    TooLarge { limit: u64 },
    #[error("would take the request over its {limit}-byte limit for all images together")]
    RequestTooLarge { limit: u64 },
    #[error("is not an image of a supported type (PNG, JPEG, TIFF, WebP, BMP, GIF) or a PDF{}", describe_content_type(.content_type))]
    NotAnImage { content_type: Option<String> },
    #[error("is a malformed data: URL: {0}")]
    BadDataUrl(String),
    #[error("timed out after {0} seconds")]
    Timeout(u64),
    #[error("redirected more than {0} times")]
    TooManyRedirects(usize),
    #[error("could not be fetched: {0}")]
    Connect(String),
}

/// What the URL said its content was (a server's `Content-Type`, a `data:` URL's type), which
/// is all a caller can check: "image/png" alone would read as if PNG were refused.
fn describe_content_type(content_type: &Option<String>) -> String {
    match content_type.as_deref().map(str::trim) {
        Some(ct)
            if ct.to_ascii_lowercase().starts_with("image/")
                || ct.eq_ignore_ascii_case("application/pdf") =>
        {
            format!("; it is labelled {ct}, but its bytes do not begin as such a file does")
        }
        Some(ct) if !ct.is_empty() => format!("; it is labelled {ct}"),
        _ => String::new(),
    }
}

impl FetchError {
    /// Whether the remote server, not the URL's author, is to blame.
    pub fn is_upstream(&self) -> bool {
        match self {
            FetchError::Status { status } => *status >= 500,
            FetchError::Timeout(_) | FetchError::Connect(_) | FetchError::TooManyRedirects(_) => {
                true
            }
            _ => false,
        }
    }
}

/// Shared state of one request's fetches: how many bytes all its images have used so far.
#[derive(Debug)]
pub struct RequestBudget {
    used: AtomicU64,
    limit: u64,
}

impl RequestBudget {
    pub fn new(limit: u64) -> Self {
        Self {
            used: AtomicU64::new(0),
            limit,
        }
    }

    fn charge(&self, bytes: u64) -> Result<(), FetchError> {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.limit {
            Err(FetchError::RequestTooLarge { limit: self.limit })
        } else {
            Ok(())
        }
    }
}

/// The seam between the workflow and wherever images come from.
#[async_trait]
pub trait ImageSource: Send + Sync {
    async fn fetch(&self, url: &str, budget: &RequestBudget) -> Result<FetchedImage, FetchError>;
}

/// Fetches over HTTP(S) with the address guard, and decodes `data:` URLs.
pub struct HttpFetcher {
    client: reqwest::Client,
    guard: Arc<AddressGuard>,
    permits: Arc<Semaphore>,
    max_image_bytes: u64,
    timeout: Duration,
}

/// Marks a redirect refused by the guard, so the error can be told apart from others.
#[derive(Debug, thiserror::Error)]
#[error("redirect to non-public host {0}")]
struct BlockedRedirect(String);

#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to non-public addresses")]
struct BlockedName(String);

#[derive(Debug, thiserror::Error)]
#[error("more than {0} redirects")]
struct RedirectLimit(usize);

/// Resolves host names and drops every address the guard refuses; a name left with none
/// fails. Because reqwest resolves through this for every connection, the check also
/// covers redirects and cannot be raced by a second DNS answer (no check-then-use gap).
struct GuardedResolver {
    guard: Arc<AddressGuard>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let admitted: Vec<SocketAddr> = if guard.host_allowed(&host) {
                addrs
            } else {
                addrs
                    .into_iter()
                    .filter(|a| guard.ip_allowed(a.ip()))
                    .collect()
            };
            if admitted.is_empty() {
                return Err(Box::new(BlockedName(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(admitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn host_literal_allowed(guard: &AddressGuard, url: &url::Url) -> Result<(), FetchError> {
    let blocked = |host: String| FetchError::Blocked { host };
    match url.host() {
        Some(url::Host::Ipv4(v4)) => {
            if !guard.ip_allowed(IpAddr::V4(v4)) && !guard.host_allowed(&v4.to_string()) {
                return Err(blocked(v4.to_string()));
            }
        }
        Some(url::Host::Ipv6(v6)) => {
            if !guard.ip_allowed(IpAddr::V6(v6)) {
                return Err(blocked(format!("[{v6}]")));
            }
        }
        Some(url::Host::Domain(_)) => {}
        None => return Err(FetchError::InvalidUrl("the URL has no host".into())),
    }
    Ok(())
}

impl HttpFetcher {
    pub fn new(settings: &FetchSettings) -> Result<Self, FetchError> {
        let guard = Arc::new(AddressGuard::new(
            &settings.allow_hosts,
            settings.allow_private_networks,
        ));
        let redirect_guard = guard.clone();
        let max_redirects = settings.max_redirects;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                return attempt.error(RedirectLimit(max_redirects));
            }
            let url = attempt.url();
            if !matches!(url.scheme(), "http" | "https") {
                let scheme = url.scheme().to_string();
                return attempt.error(BlockedRedirect(scheme));
            }
            if host_literal_allowed(&redirect_guard, url).is_err() {
                let host = url.host_str().unwrap_or_default().to_string();
                return attempt.error(BlockedRedirect(host));
            }
            attempt.follow()
        });
        let client = reqwest::Client::builder()
            .user_agent(concat!("examiner/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(settings.connect_timeout_secs))
            .redirect(policy)
            .dns_resolver(Arc::new(GuardedResolver {
                guard: guard.clone(),
            }))
            // Proxies would bypass the address guard.
            .no_proxy()
            .pool_max_idle_per_host(16)
            .build()
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        Ok(Self {
            client,
            guard,
            permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            max_image_bytes: settings.max_image_bytes,
            timeout: Duration::from_secs(settings.timeout_secs),
        })
    }

    async fn fetch_http(
        &self,
        url: url::Url,
        budget: &RequestBudget,
    ) -> Result<(Bytes, Option<String>), FetchError> {
        host_literal_allowed(&self.guard, &url)?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| FetchError::Connect("the service is shutting down".into()))?;
        let host = url.host_str().unwrap_or_default().to_string();
        let timeout_secs = self.timeout.as_secs();
        let response = self
            .client
            .get(url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| classify(e, &host, timeout_secs))?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                status: status.as_u16(),
            });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(length) = response.content_length() {
            if length > self.max_image_bytes {
                return Err(FetchError::TooLarge {
                    limit: self.max_image_bytes,
                });
            }
        }
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify(e, &host, timeout_secs))?;
            if (body.len() + chunk.len()) as u64 > self.max_image_bytes {
                return Err(FetchError::TooLarge {
                    limit: self.max_image_bytes,
                });
            }
            budget.charge(chunk.len() as u64)?;
            body.extend_from_slice(&chunk);
        }
        Ok((body.freeze(), content_type))
    }

    fn decode_data_url(
        &self,
        url: &str,
        budget: &RequestBudget,
    ) -> Result<(Bytes, Option<String>), FetchError> {
        let rest = &url["data:".len()..];
        let (meta, payload) = rest
            .split_once(',')
            .ok_or_else(|| FetchError::BadDataUrl("no comma before the data".into()))?;
        let is_base64 = meta
            .rsplit(';')
            .next()
            .is_some_and(|p| p.eq_ignore_ascii_case("base64"));
        if !is_base64 {
            return Err(FetchError::BadDataUrl(
                "only base64-encoded data: URLs are accepted for images".into(),
            ));
        }
        // Check the size the payload will decode to before decoding it.
        let estimated = (payload.len() as u64 / 4) * 3;
        if estimated > self.max_image_bytes + 3 {
            return Err(FetchError::TooLarge {
                limit: self.max_image_bytes,
            });
        }
        let cleaned: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(cleaned.as_bytes())
            .map_err(|e| FetchError::BadDataUrl(format!("invalid base64: {e}")))?;
        if bytes.len() as u64 > self.max_image_bytes {
            return Err(FetchError::TooLarge {
                limit: self.max_image_bytes,
            });
        }
        budget.charge(bytes.len() as u64)?;
        let declared = meta.split(';').next().filter(|m| !m.is_empty());
        Ok((Bytes::from(bytes), declared.map(str::to_string)))
    }
}

/// Turns reqwest's error into what happened, finding the guard's own errors in the chain.
fn classify(error: reqwest::Error, host: &str, timeout_secs: u64) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(err) = source {
        if let Some(BlockedRedirect(target)) = err.downcast_ref::<BlockedRedirect>() {
            return FetchError::Blocked {
                host: target.clone(),
            };
        }
        if let Some(BlockedName(name)) = err.downcast_ref::<BlockedName>() {
            return FetchError::Blocked { host: name.clone() };
        }
        if let Some(RedirectLimit(n)) = err.downcast_ref::<RedirectLimit>() {
            return FetchError::TooManyRedirects(*n);
        }
        source = err.source();
    }
    if error.is_timeout() {
        FetchError::Timeout(timeout_secs)
    } else if error.is_connect() {
        FetchError::Connect(format!("cannot connect to {host}"))
    } else {
        FetchError::Connect(format!("transfer from {host} failed"))
    }
}

/// MIME type of a supported image format, judged from its first bytes by the same check the
/// decoder uses ([`crate::ocr::sniff`]), so whatever is fetched as an image is one OCR reads
/// as an image. (`image::guess_format` took any bytes starting "BM" for a BMP: found by
/// fuzzing, `fuzz/fuzz_targets/image_decode.rs`.)
pub fn sniff_image_type(bytes: &[u8]) -> Option<&'static str> {
    use image::ImageFormat;
    match crate::ocr::sniff(bytes)? {
        ImageFormat::Png => Some("image/png"),
        ImageFormat::Jpeg => Some("image/jpeg"),
        ImageFormat::Tiff => Some("image/tiff"),
        ImageFormat::WebP => Some("image/webp"),
        ImageFormat::Bmp => Some("image/bmp"),
        ImageFormat::Gif => Some("image/gif"),
        _ => None,
    }
}

/// [`sniff_image_type`], or [`crate::ocr::pdf::MEDIA_TYPE`] for a PDF (a scanned script,
/// rendered page by page before OCR).
pub fn sniff_media_type(bytes: &[u8]) -> Option<&'static str> {
    sniff_image_type(bytes)
        .or_else(|| crate::ocr::pdf::is_pdf(bytes).then_some(crate::ocr::pdf::MEDIA_TYPE))
}

#[async_trait]
impl ImageSource for HttpFetcher {
    async fn fetch(&self, url: &str, budget: &RequestBudget) -> Result<FetchedImage, FetchError> {
        let started = Instant::now();
        let trimmed = url.trim();
        let (bytes, content_type, stored_url) = if trimmed
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("data:"))
        {
            let (bytes, declared) = self.decode_data_url(trimmed, budget)?;
            (bytes, declared, String::new())
        } else {
            let parsed =
                url::Url::parse(trimmed).map_err(|e| FetchError::InvalidUrl(e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(FetchError::UnsupportedScheme(parsed.scheme().to_string()));
            }
            let stored = parsed.to_string();
            let (bytes, content_type) = self.fetch_http(parsed, budget).await?;
            (bytes, content_type, stored)
        };
        let media_type = sniff_media_type(&bytes).ok_or(FetchError::NotAnImage { content_type })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let stored_url = if stored_url.is_empty() {
            format!("data:{media_type};sha256={sha256}")
        } else {
            stored_url
        };
        metrics::counter!("examiner_fetch_bytes_total").increment(bytes.len() as u64);
        metrics::histogram!("examiner_fetch_seconds").record(started.elapsed().as_secs_f64());
        Ok(FetchedImage {
            bytes,
            media_type,
            sha256,
            stored_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{sniff_image_type, sniff_media_type, FetchError};

    #[test]
    fn a_refused_file_is_described_by_what_it_claimed_to_be() {
        let refused = |content_type: Option<&str>| {
            FetchError::NotAnImage {
                content_type: content_type.map(str::to_string),
            }
            .to_string()
        };
        assert_eq!(
            refused(Some("image/png")),
            "is not an image of a supported type (PNG, JPEG, TIFF, WebP, BMP, GIF) or a PDF; \
             it is labelled image/png, but its bytes do not begin as such a file does"
        );
        assert!(refused(Some("text/html; charset=utf-8"))
            .ends_with("or a PDF; it is labelled text/html; charset=utf-8"));
        assert!(refused(None).ends_with("or a PDF"));
        assert!(refused(Some(" ")).ends_with("or a PDF"));
    }

    #[test]
    fn only_what_the_decoder_reads_counts_as_an_image() {
        // Text that happens to start with "BM" is not a bitmap.
        assert_eq!(sniff_image_type(b"BMW annual report 2024, page 1"), None);
        // The fuzzer's input: "BM" with a DIB header size the decoder does not know.
        let fuzzed = [
            0x42, 0x4d, 0x9a, 0, 0, 0, 0, 0, 0, 0, 0x36, 0x74, 0, 0, 0, 0x28, 0, 0, 0, 6, 0, 0,
        ];
        assert_eq!(sniff_image_type(&fuzzed), None);
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&[0; 12]);
        bmp.extend_from_slice(&40u32.to_le_bytes());
        assert_eq!(sniff_image_type(&bmp), Some("image/bmp"));
        assert_eq!(
            sniff_image_type(b"\x89PNG\r\n\x1a\n...."),
            Some("image/png")
        );
        assert_eq!(sniff_image_type(b"<html>not found</html>"), None);
    }

    #[test]
    fn a_pdf_is_fetched_as_a_pdf_but_is_no_image_to_the_decoder() {
        assert_eq!(sniff_media_type(b"%PDF-1.7\n"), Some("application/pdf"));
        assert_eq!(sniff_image_type(b"%PDF-1.7\n"), None);
        assert_eq!(
            sniff_media_type(b"\x89PNG\r\n\x1a\n...."),
            Some("image/png")
        );
        assert_eq!(sniff_media_type(b"<html>not found</html>"), None);
    }
}
