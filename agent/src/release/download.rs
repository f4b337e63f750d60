//! Streaming download: into `<asset>.partial`, hashed while it streams, resumed with `Range`
//! after a broken connection, retried with backoff; optionally handed on, chunk by chunk, to an
//! unpacker running at the same time.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header;
use reqwest::StatusCode;
use sha2::Digest as _;
use tokio::sync::mpsc::Sender;
use url::Url;

use super::checksum::Sha256;
use super::{ReleaseError, RetryPolicy};

/// How often a log line reports progress when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("request failed")]
    Request(#[source] reqwest::Error),
    #[error("the server answered {0}")]
    Status(StatusCode),
}

impl TransferError {
    fn is_retryable(&self) -> bool {
        match self {
            TransferError::Request(_) => true,
            TransferError::Status(status) => {
                status.is_server_error()
                    || *status == StatusCode::RANGE_NOT_SATISFIABLE
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
        }
    }
}

/// One download of one URL into one partial file.
pub struct Download<'a> {
    pub http: &'a reqwest::Client,
    pub url: &'a Url,
    pub token: Option<&'a str>,
    pub partial: &'a Path,
    pub retry: &'a RetryPolicy,
    pub progress: bool,
}

/// Where the bytes go besides the partial file: an unpacker that reads them as they arrive. It is
/// dropped (the unpacker then sees a truncated stream and fails) when the stream has to restart
/// from byte 0, because the unpacker cannot rewind.
pub type Tap = Option<Sender<Bytes>>;

impl Download<'_> {
    /// Download (or finish downloading) into the partial file and return the SHA-256 of its
    /// whole content.
    pub async fn run(&self, mut tap: Tap) -> Result<Sha256, ReleaseError> {
        let io_err = |source| ReleaseError::Io {
            path: self.partial.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.partial)
            .map_err(io_err)?;
        let mut hasher = sha2::Sha256::new();
        let mut offset = replay_partial(&mut file, &mut hasher, &mut tap)
            .await
            .map_err(io_err)?;
        if offset > 0 {
            log::info!("resuming `{}` at byte {offset}", self.url);
        }

        let mut progress = Progress::new(self.progress, self.url);
        let mut failures = 0u32;
        loop {
            let before = offset;
            match self
                .attempt(&mut file, &mut hasher, &mut offset, &mut tap, &mut progress)
                .await
            {
                Ok(()) => break,
                Err(Attempt::Io(source)) => return Err(io_err(source)),
                Err(Attempt::Transfer(err)) => {
                    if offset > before {
                        failures = 0;
                    }
                    failures += 1;
                    if !err.is_retryable() || failures >= self.retry.attempts {
                        progress.abandon();
                        return Err(ReleaseError::Download {
                            url: self.url.to_string(),
                            attempts: failures,
                            source: err,
                        });
                    }
                    let delay = self.retry.delay(failures);
                    log::warn!(
                        "download of `{}` failed at byte {offset} ({}), retrying in {} ms",
                        self.url,
                        error_chain(&err),
                        delay.as_millis()
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
        progress.finish();
        file.flush().map_err(io_err)?;
        Ok(Sha256::from_hasher(hasher))
    }

    async fn attempt(
        &self,
        file: &mut File,
        hasher: &mut sha2::Sha256,
        offset: &mut u64,
        tap: &mut Tap,
        progress: &mut Progress,
    ) -> Result<(), Attempt> {
        let mut request = self.http.get(self.url.clone());
        if *offset > 0 {
            request = request.header(header::RANGE, format!("bytes={offset}-"));
        }
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        let mut response = request.send().await.map_err(TransferError::Request)?;
        let status = response.status();
        match status {
            StatusCode::PARTIAL_CONTENT if *offset > 0 => {}
            StatusCode::OK => {
                if *offset > 0 {
                    log::info!("`{}` ignored the range request, starting over", self.url);
                    restart(file, hasher, offset, tap).map_err(Attempt::Io)?;
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // `bytes */SIZE`: the partial file is already whole (an earlier run stopped
                // between the last byte and the rename); the hash decides whether it is right.
                let total = response
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.strip_prefix("bytes */"))
                    .and_then(|value| value.parse::<u64>().ok());
                if total == Some(*offset) {
                    return Ok(());
                }
                // Longer than the asset: it is not this asset; start over.
                restart(file, hasher, offset, tap).map_err(Attempt::Io)?;
                return Err(TransferError::Status(status).into());
            }
            _ => return Err(TransferError::Status(status).into()),
        }
        if let Some(length) = response.content_length() {
            progress.set_total(*offset + length);
        }
        progress.set_position(*offset);
        file.seek(SeekFrom::Start(*offset)).map_err(Attempt::Io)?;
        while let Some(chunk) = response.chunk().await.map_err(TransferError::Request)? {
            file.write_all(&chunk).map_err(Attempt::Io)?;
            hasher.update(&chunk);
            *offset += chunk.len() as u64;
            progress.set_position(*offset);
            if let Some(sender) = tap {
                if sender.send(chunk).await.is_err() {
                    // The unpacker stopped; the download still completes into the cache.
                    *tap = None;
                }
            }
        }
        Ok(())
    }
}

enum Attempt {
    Io(std::io::Error),
    Transfer(TransferError),
}

impl From<TransferError> for Attempt {
    fn from(err: TransferError) -> Attempt {
        Attempt::Transfer(err)
    }
}

/// Hash (and hand on) what an earlier, interrupted run left in the partial file.
async fn replay_partial(
    file: &mut File,
    hasher: &mut sha2::Sha256,
    tap: &mut Tap,
) -> std::io::Result<u64> {
    let mut offset = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(offset);
        }
        hasher.update(&buffer[..read]);
        offset += read as u64;
        if let Some(sender) = tap {
            if sender
                .send(Bytes::copy_from_slice(&buffer[..read]))
                .await
                .is_err()
            {
                *tap = None;
            }
        }
    }
}

fn restart(
    file: &mut File,
    hasher: &mut sha2::Sha256,
    offset: &mut u64,
    tap: &mut Tap,
) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    *hasher = sha2::Sha256::new();
    *offset = 0;
    *tap = None;
    Ok(())
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A progress bar on a terminal, a log line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    url: String,
    total: Option<u64>,
    position: u64,
    last_log: Instant,
}

impl Progress {
    fn new(enabled: bool, url: &Url) -> Progress {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            let name = url
                .path_segments()
                .and_then(|mut s| s.next_back())
                .unwrap_or("runner");
            bar.set_message(name.to_owned());
            bar
        });
        Progress {
            bar,
            url: url.to_string(),
            total: None,
            position: 0,
            last_log: Instant::now(),
        }
    }

    fn set_total(&mut self, total: u64) {
        self.total = Some(total);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    fn set_position(&mut self, position: u64) {
        self.position = position;
        match &self.bar {
            Some(bar) => bar.set_position(position),
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                match self.total {
                    Some(total) if total > 0 => log::info!(
                        "downloading `{}`: {} of {} MB ({}%)",
                        self.url,
                        position >> 20,
                        total >> 20,
                        position * 100 / total
                    ),
                    _ => log::info!("downloading `{}`: {} MB", self.url, position >> 20),
                }
            }
            None => {}
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        log::info!("downloaded `{}` ({} MB)", self.url, self.position >> 20);
    }

    fn abandon(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// What the test server does, request by request.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Answer 503.
        Unavailable,
        /// Send the headers, then this many body bytes, then close.
        DropAfter(usize),
        /// Serve normally (honouring `Range` when `ranges`).
        Serve,
    }

    struct Server {
        url: Url,
        ranges_seen: Arc<Mutex<Vec<Option<String>>>>,
    }

    async fn server(body: Vec<u8>, script: Vec<Behaviour>, ranges: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!(
            "http://{}/runner.tar.gz",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let ranges_seen = Arc::new(Mutex::new(Vec::new()));
        let seen = ranges_seen.clone();
        tokio::spawn(async move {
            let mut script = script.into_iter();
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&request).to_lowercase();
                let range = text
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .map(|r| r.trim_end_matches('-').to_owned());
                seen.lock().unwrap().push(range.clone());
                let start = match (ranges, &range) {
                    (true, Some(r)) => r.parse::<usize>().unwrap(),
                    _ => 0,
                };
                let status = if start > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let rest = &body[start..];
                match script.next().unwrap_or(Behaviour::Serve) {
                    Behaviour::Unavailable => {
                        let _ = socket
                            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                    }
                    Behaviour::DropAfter(n) => {
                        let head = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            rest.len()
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.write_all(&rest[..n.min(rest.len())]).await;
                    }
                    Behaviour::Serve => {
                        let head = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            rest.len()
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.write_all(rest).await;
                    }
                }
                let _ = socket.shutdown().await;
            }
        });
        Server { url, ranges_seen }
    }

    fn body() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect()
    }

    async fn run(server: &Server, partial: &Path) -> Result<Sha256, ReleaseError> {
        let http = reqwest::Client::new();
        let retry = RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        };
        Download {
            http: &http,
            url: &server.url,
            token: None,
            partial,
            retry: &retry,
            progress: false,
        }
        .run(None)
        .await
    }

    fn sha(bytes: &[u8]) -> Sha256 {
        Sha256::from_hasher(sha2::Sha256::new_with_prefix(bytes))
    }

    #[tokio::test]
    async fn a_broken_connection_is_resumed_with_range() {
        let body = body();
        let server = server(
            body.clone(),
            vec![Behaviour::DropAfter(100_000), Behaviour::DropAfter(50_000)],
            true,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("x.partial");
        assert_eq!(run(&server, &partial).await.unwrap(), sha(&body));
        assert_eq!(fs_read(&partial), body);
        assert_eq!(
            *server.ranges_seen.lock().unwrap(),
            [None, Some("100000".to_owned()), Some("150000".to_owned())]
        );
    }

    #[tokio::test]
    async fn server_errors_are_retried_then_given_up() {
        let body = body();
        let server = server(
            body.clone(),
            vec![Behaviour::Unavailable, Behaviour::Unavailable],
            true,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            run(&server, &dir.path().join("a.partial")).await.unwrap(),
            sha(&body)
        );

        let server = server_all_unavailable().await;
        let err = run(&server, &dir.path().join("b.partial"))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("gave up after 3 attempts"),
            "{err}"
        );
        assert_eq!(error_chain(&err), format!("cannot download `{}` (gave up after 3 attempts): the server answered 503 Service Unavailable", server.url));
    }

    async fn server_all_unavailable() -> Server {
        server(body(), vec![Behaviour::Unavailable; 10], true).await
    }

    #[tokio::test]
    async fn a_leftover_partial_file_is_resumed_and_a_server_without_ranges_restarts() {
        let body = body();
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("x.partial");
        std::fs::write(&partial, &body[..1000]).unwrap();
        let honouring = server(body.clone(), vec![], true).await;
        assert_eq!(run(&honouring, &partial).await.unwrap(), sha(&body));
        assert_eq!(
            *honouring.ranges_seen.lock().unwrap(),
            [Some("1000".to_owned())]
        );

        // A stale partial whose server ignores `Range`: the 200 answer replaces it whole.
        std::fs::write(&partial, b"garbage from another file").unwrap();
        let ignoring = server(body.clone(), vec![], false).await;
        assert_eq!(run(&ignoring, &partial).await.unwrap(), sha(&body));
        assert_eq!(fs_read(&partial), body);
    }

    fn fs_read(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }
}
