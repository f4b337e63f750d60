//! Request dispatch, faults, request counting and response helpers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;

use std::sync::atomic::Ordering;

use super::{control, faults, releases, rest, runner_service, HoldRelease, Shared};

/// A GitHub-shaped error: `{"message", "documentation_url", "status"}`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
    pub documentation_url: String,
    pub headers: Vec<(&'static str, String)>,
}

pub(crate) const DOCS_REST: &str = "https://docs.github.com/rest";
pub(crate) const DOCS_RUNNERS: &str = "https://docs.github.com/rest/actions/self-hosted-runners";
pub(crate) const DOCS_RATE: &str =
    "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";

impl ApiError {
    pub(crate) fn new(status: u16, message: &str) -> ApiError {
        ApiError {
            status,
            message: message.to_string(),
            documentation_url: if status == 401 || status == 404 {
                DOCS_REST.to_string()
            } else {
                DOCS_RUNNERS.to_string()
            },
            headers: Vec::new(),
        }
    }

    pub(crate) fn not_found() -> ApiError {
        ApiError::new(404, "Not Found")
    }

    pub(crate) fn bad_credentials() -> ApiError {
        ApiError::new(401, "Bad credentials")
    }

    pub(crate) fn validation(message: &str) -> ApiError {
        ApiError::new(422, message)
    }

    pub(crate) fn docs(mut self, url: &str) -> ApiError {
        self.documentation_url = url.to_string();
        self
    }

    pub(crate) fn into_response(self) -> Response {
        let body = serde_json::json!({
            "message": self.message,
            "documentation_url": self.documentation_url,
            "status": self.status.to_string(),
        });
        let mut resp = json(self.status, &body);
        for (name, value) in self.headers {
            set_header(&mut resp, name, &value);
        }
        resp
    }
}

/// One request as the handlers see it (the body is read up front; runner-side and REST bodies
/// are small JSON).
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    /// The query string as sent (pagination links keep its order).
    pub raw_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `METHOD /route/{template}` for request counting; set by the handler that routes.
    pub template: String,
    pub fault_status: Option<u16>,
    pub secondary: Option<(u16, u64)>,
}

impl Ctx {
    pub(crate) fn segments(&self) -> Vec<String> {
        self.path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect()
    }

    pub(crate) fn route(&mut self, template: &str) {
        self.template = format!("{} {}", self.method, template);
    }

    pub(crate) fn json_body<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        let body: &[u8] = if self.body.is_empty() {
            b"{}"
        } else {
            &self.body
        };
        serde_json::from_slice(body)
            .map_err(|e| ApiError::new(400, &format!("Problems parsing JSON: {e}")).docs(DOCS_REST))
    }

    /// An injected status fault, answered the way GitHub's front end answers it.
    pub(crate) fn injected_status(&self) -> Option<Response> {
        let status = self.fault_status?;
        Some(match status {
            502..=504 => {
                let mut resp = Response::new(Body::from(format!(
                    "<html><body><h1>{status} {}</h1>Emulated upstream failure.</body></html>\n",
                    StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("Error")
                )));
                *resp.status_mut() =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                set_header(&mut resp, "content-type", "text/html");
                resp
            }
            _ => ApiError::new(status, "Server Error")
                .docs(DOCS_REST)
                .into_response(),
        })
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

pub(crate) fn json(status: u16, value: &serde_json::Value) -> Response {
    let mut resp = Response::new(Body::from(value.to_string()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    set_header(&mut resp, "content-type", "application/json; charset=utf-8");
    resp
}

pub(crate) fn empty(status: u16) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

pub(crate) fn set_header(resp: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// The single entry point: faults, routing, counting.
pub(crate) async fn dispatch(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if path == "/_emulator" || path.starts_with("/_emulator/") {
        return control::handle(shared, req).await;
    }
    let plan = faults::take(&mut shared.state().faults, req.method().as_str(), &path);
    if plan.hold == Some(faults::HoldPoint::Before) && hold(&shared).await == HoldRelease::Drop {
        return faults::dropped();
    }
    if plan.latency_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(plan.latency_ms)).await;
    }
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let raw_query = req.uri().query().unwrap_or_default().to_string();
    let (parts, body) = req.into_parts();
    let body = match to_bytes(body, 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return ApiError::new(400, "Problems reading the request body").into_response(),
    };
    let mut ctx = Ctx {
        shared: shared.clone(),
        method: parts.method,
        path: path.clone(),
        query,
        raw_query,
        headers: parts.headers,
        body,
        template: String::new(),
        fault_status: plan.status,
        secondary: plan.secondary,
    };
    let resp = if path == "/api/v3" || path.starts_with("/api/v3/") {
        rest::handle(&mut ctx).await
    } else if path.starts_with("/_services/pipelines/") {
        runner_service::handle(&mut ctx).await
    } else if path.starts_with("/actions/runner/releases/download/")
        || path.starts_with("/_objects/")
    {
        releases::handle_download(&mut ctx).await
    } else {
        ctx.route("/{web}");
        ctx.injected_status().unwrap_or_else(|| {
            let mut r = Response::new(Body::from("Not Found"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        })
    };
    {
        let mut st = shared.state();
        let template = if ctx.template.is_empty() {
            format!("{} {}", ctx.method, path)
        } else {
            ctx.template.clone()
        };
        log::debug!(
            "github emulator: {} {path} ({template}) -> {}",
            ctx.method,
            resp.status().as_u16()
        );
        let count = st.counts.entry(template).or_default();
        count.count += 1;
        if resp.status() == StatusCode::NOT_MODIFIED {
            count.not_modified += 1;
        }
    }
    if plan.hold == Some(faults::HoldPoint::After) && hold(&shared).await == HoldRelease::Drop {
        return faults::dropped();
    }
    match plan.drop_after {
        Some(limit) => resp.map(|b| faults::truncate_body(b, limit)),
        None => resp,
    }
}

/// Counts a held request while it waits for the next release (also when its client goes away
/// and the request is dropped).
struct Held<'a>(&'a Shared);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// Wait for the next release of held requests; how they go on.
async fn hold(shared: &Shared) -> HoldRelease {
    let mut releases = shared.releases.subscribe();
    releases.borrow_and_update();
    shared.held.fetch_add(1, Ordering::SeqCst);
    let _held = Held(shared);
    shared.changed.notify_waiters();
    match releases.changed().await {
        Ok(()) => releases.borrow().1,
        Err(_) => HoldRelease::Drop,
    }
}
