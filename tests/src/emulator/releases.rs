//! actions/runner releases: the release objects of the REST API, `runners/downloads`, and asset
//! downloads (`browser_download_url` → 302 → an object URL that serves `Range`).

use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::clock::format_seconds;
use super::http::{set_header, Ctx};
use super::state::{version_cmp, AssetData, AssetEntry, ReleaseEntry, Scope, State};
use super::{auth, AssetSource, EmulatorError, ReleaseOptions, Shared};

/// `actions-runner-linux-x64-2.336.0.tar.gz` (`.zip` for Windows).
pub(crate) fn asset_name(platform: &str, version: &str) -> String {
    let ext = if platform.starts_with("win-") {
        "zip"
    } else {
        "tar.gz"
    };
    format!("actions-runner-{platform}-{version}.{ext}")
}

async fn hash_file(path: &std::path::Path) -> Result<(u64, String), std::io::Error> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

pub(crate) async fn publish(
    shared: &Arc<Shared>,
    version: &str,
    assets: Vec<(String, AssetSource)>,
    options: ReleaseOptions,
) -> Result<(), EmulatorError> {
    let version = version.trim_start_matches('v').to_string();
    if assets.is_empty() {
        return Err(EmulatorError::EmptyRelease { version });
    }
    let mut prepared = Vec::new();
    for (platform, source) in assets {
        let (size, sha256, data) = match source {
            AssetSource::Bytes(bytes) => {
                let sha = hex::encode(Sha256::digest(&bytes));
                (
                    bytes.len() as u64,
                    sha,
                    AssetData::Bytes(Bytes::from(bytes)),
                )
            }
            AssetSource::Path(path) => {
                let (size, sha) =
                    hash_file(&path)
                        .await
                        .map_err(|source| EmulatorError::Asset {
                            path: path.clone(),
                            source,
                        })?;
                (size, sha, AssetData::File(path))
            }
        };
        prepared.push((platform, size, sha256, data));
    }
    let now = shared.clock.now();
    let mut st = shared.state();
    let mut body = format!(
        "## What's Changed\n\nEmulated release of the actions runner v{version}.\n\n\
         Note: the newest release may not yet be the version GitHub expects for your runners \
         (progressive rollout).\n\n## SHA-256 Checksums\n\n\
         The SHA-256 checksums for the packages included in this build are shown below:\n\n"
    );
    let mut entries = Vec::new();
    for (platform, size, sha256, data) in prepared {
        let name = asset_name(&platform, &version);
        if options.body_markers {
            body.push_str(&format!(
                "- {name} <!-- BEGIN SHA {platform} -->{sha256}<!-- END SHA {platform} -->\n"
            ));
        }
        st.objects.insert(sha256.clone(), data);
        let id = st.id();
        entries.push(AssetEntry {
            id,
            name,
            platform,
            size,
            sha256,
            with_digest: options.digest,
        });
    }
    let id = st.id();
    st.releases.retain(|r| r.version != version);
    st.releases.push(ReleaseEntry {
        id,
        version,
        published_at: now,
        body,
        assets: entries,
    });
    drop(st);
    shared.changed.notify_waiters();
    Ok(())
}

fn download_url(base: &str, version: &str, name: &str) -> String {
    format!("{base}/actions/runner/releases/download/v{version}/{name}")
}

fn release_json(base: &str, r: &ReleaseEntry) -> Value {
    let api = format!("{base}/api/v3/repos/actions/runner");
    let assets: Vec<Value> = r
        .assets
        .iter()
        .map(|a| {
            let content_type = if a.name.ends_with(".zip") {
                "application/zip"
            } else {
                "application/gzip"
            };
            json!({
                "url": format!("{api}/releases/assets/{}", a.id),
                "id": a.id,
                "node_id": format!("RA_{}", a.id),
                "name": a.name,
                "label": "",
                "uploader": {"login": "github-actions[bot]", "id": 41898282, "type": "Bot"},
                "content_type": content_type,
                "state": "uploaded",
                "size": a.size,
                "digest": if a.with_digest { json!(format!("sha256:{}", a.sha256)) } else { Value::Null },
                "download_count": 0,
                "created_at": format_seconds(r.published_at),
                "updated_at": format_seconds(r.published_at),
                "browser_download_url": download_url(base, &r.version, &a.name),
            })
        })
        .collect();
    json!({
        "url": format!("{api}/releases/{}", r.id),
        "assets_url": format!("{api}/releases/{}/assets", r.id),
        "upload_url": format!("{base}/api/uploads/repos/actions/runner/releases/{}/assets{{?name,label}}", r.id),
        "html_url": format!("{base}/actions/runner/releases/tag/v{}", r.version),
        "id": r.id,
        "author": {"login": "github-actions[bot]", "id": 41898282, "type": "Bot"},
        "node_id": format!("RE_{}", r.id),
        "tag_name": format!("v{}", r.version),
        "target_commitish": "main",
        "name": format!("v{}", r.version),
        "draft": false,
        "immutable": false,
        "prerelease": false,
        "created_at": format_seconds(r.published_at),
        "updated_at": format_seconds(r.published_at),
        "published_at": format_seconds(r.published_at),
        "assets": assets,
        "tarball_url": format!("{api}/tarball/v{}", r.version),
        "zipball_url": format!("{api}/zipball/v{}", r.version),
        "body": r.body,
    })
}

fn latest_entry(st: &State) -> Option<&ReleaseEntry> {
    st.releases
        .iter()
        .max_by(|a, b| version_cmp(&a.version, &b.version))
}

pub(crate) fn latest(st: &State, base: &str) -> Option<Value> {
    latest_entry(st).map(|r| release_json(base, r))
}

pub(crate) fn by_tag(st: &State, base: &str, tag: &str) -> Option<Value> {
    let version = tag.strip_prefix('v')?;
    st.releases
        .iter()
        .find(|r| r.version == version)
        .map(|r| release_json(base, r))
}

pub(crate) fn list(st: &State, base: &str) -> Value {
    let mut releases: Vec<&ReleaseEntry> = st.releases.iter().collect();
    releases.sort_by(|a, b| version_cmp(&b.version, &a.version));
    Value::Array(releases.iter().map(|r| release_json(base, r)).collect())
}

/// The version GitHub expects runners of `scope` to run.
pub(crate) fn expected_version(st: &State, scope: &Scope) -> Option<String> {
    st.expected_version_by_scope
        .get(scope)
        .cloned()
        .or_else(|| st.expected_version.clone())
        .or_else(|| latest_entry(st).map(|r| r.version.clone()))
}

/// The asset of a release for a platform (`linux-x64`).
pub(crate) fn asset_for(
    st: &State,
    base: &str,
    version: &str,
    platform: &str,
) -> Option<(String, String)> {
    let r = st.releases.iter().find(|r| r.version == version)?;
    let a = r.assets.iter().find(|a| a.platform == platform)?;
    Some((download_url(base, version, &a.name), a.sha256.clone()))
}

/// `GET …/actions/runners/downloads`.
pub(crate) fn downloads(st: &State, base: &str, scope: &Scope) -> Value {
    let Some(version) = expected_version(st, scope) else {
        return json!([]);
    };
    let Some(r) = st.releases.iter().find(|r| r.version == version) else {
        return json!([]);
    };
    Value::Array(
        r.assets
            .iter()
            .map(|a| {
                let (os, arch) = a.platform.split_once('-').unwrap_or((&a.platform, ""));
                json!({
                    "os": os,
                    "architecture": arch,
                    "download_url": download_url(base, &r.version, &a.name),
                    "filename": a.name,
                    "sha256_checksum": a.sha256,
                })
            })
            .collect(),
    )
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut r = Response::new(Body::from(text.to_string()));
    *r.status_mut() = status;
    set_header(&mut r, "content-type", "text/plain; charset=utf-8");
    r
}

/// `GET /actions/runner/releases/download/v<ver>/<file>` and `GET /_objects/<sha>?token=…`.
pub(crate) async fn handle_download(ctx: &mut Ctx) -> Response {
    let segs = ctx.segments();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let is_get = ctx.method == Method::GET || ctx.method == Method::HEAD;
    match s.as_slice() {
        ["actions", "runner", "releases", "download", tag, file] if is_get => {
            ctx.route("/actions/runner/releases/download/{tag}/{file}");
            if let Some(r) = ctx.injected_status() {
                return r;
            }
            let now = ctx.shared.clock.now();
            let mut st = ctx.shared.state();
            let version = tag.trim_start_matches('v');
            let found = st
                .releases
                .iter()
                .find(|r| r.version == version)
                .and_then(|r| r.assets.iter().find(|a| a.name == *file))
                .map(|a| a.sha256.clone());
            let Some(sha) = found else {
                return plain(StatusCode::NOT_FOUND, "Not Found");
            };
            let token = auth::random_string(b"abcdefghijklmnopqrstuvwxyz0123456789", 40);
            st.object_tokens
                .insert(token.clone(), (sha.clone(), now + Duration::minutes(5)));
            let mut r = plain(StatusCode::FOUND, "");
            set_header(
                &mut r,
                "location",
                &format!("{}/_objects/{sha}?token={token}", ctx.shared.base_url),
            );
            r
        }
        ["_objects", sha] if is_get => {
            ctx.route("/_objects/{sha256}");
            if let Some(r) = ctx.injected_status() {
                return r;
            }
            serve_object(ctx, sha).await
        }
        _ => {
            ctx.route("/actions/runner/releases/download/{other}");
            plain(StatusCode::NOT_FOUND, "Not Found")
        }
    }
}

/// Parses one `bytes=` range against `size`: `Ok(None)` = whole body, `Err(())` = 416.
fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(h) = header else { return Ok(None) };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    // Multiple ranges are answered with the whole body, which RFC 9110 allows.
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = if a.trim().is_empty() {
        let n: u64 = b.trim().parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size.saturating_sub(1))
    } else {
        let start: u64 = a.trim().parse().map_err(|_| ())?;
        let end: u64 = if b.trim().is_empty() {
            size.saturating_sub(1)
        } else {
            b.trim()
                .parse::<u64>()
                .map_err(|_| ())?
                .min(size.saturating_sub(1))
        };
        (start, end)
    };
    if size == 0 || start >= size || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn serve_object(ctx: &Ctx, sha: &str) -> Response {
    let now = ctx.shared.clock.now();
    let data = {
        let st = ctx.shared.state();
        let token_ok = ctx
            .query
            .get("token")
            .and_then(|t| st.object_tokens.get(t))
            .is_some_and(|(s, exp)| s == sha && *exp > now);
        if !token_ok {
            return plain(
                StatusCode::FORBIDDEN,
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request.</Message></Error>",
            );
        }
        st.objects.get(sha).cloned()
    };
    let Some(data) = data else {
        return plain(StatusCode::NOT_FOUND, "Not Found");
    };
    let size = match &data {
        AssetData::Bytes(b) => b.len() as u64,
        AssetData::File(p) => match tokio::fs::metadata(p).await {
            Ok(m) => m.len(),
            Err(_) => return plain(StatusCode::NOT_FOUND, "Not Found"),
        },
    };
    let range = parse_range(ctx.headers.get("range").and_then(|v| v.to_str().ok()), size);
    let (status, start, len) = match range {
        Err(()) => {
            let mut r = plain(StatusCode::RANGE_NOT_SATISFIABLE, "");
            set_header(&mut r, "content-range", &format!("bytes */{size}"));
            return r;
        }
        Ok(None) => (StatusCode::OK, 0, size),
        Ok(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
    };
    let body = if ctx.method == Method::HEAD {
        Body::empty()
    } else {
        match &data {
            AssetData::Bytes(b) => Body::from(b.slice(start as usize..(start + len) as usize)),
            AssetData::File(p) => {
                let mut file = match tokio::fs::File::open(p).await {
                    Ok(f) => f,
                    Err(_) => return plain(StatusCode::NOT_FOUND, "Not Found"),
                };
                if file.seek(SeekFrom::Start(start)).await.is_err() {
                    return plain(StatusCode::INTERNAL_SERVER_ERROR, "seek failed");
                }
                Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                    file.take(len),
                    256 * 1024,
                ))
            }
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    set_header(&mut r, "content-type", "application/octet-stream");
    set_header(&mut r, "accept-ranges", "bytes");
    set_header(&mut r, "content-length", &len.to_string());
    set_header(
        &mut r,
        "etag",
        &format!("\"0x{}\"", &sha[..16.min(sha.len())]),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        set_header(
            &mut r,
            "content-range",
            &format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=2-4"), 10), Ok(Some((2, 4))));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ok(Some((5, 9))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Ok(Some((8, 9))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Err(()));
    }
}
