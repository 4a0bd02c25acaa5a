//! A fake instance metadata service on 127.0.0.1 for tests, served by hyper.
//!
//! It enforces the IMDSv2 rules a client can get wrong: a PUT with a valid
//! TTL header before anything else, the token header on every GET, token
//! expiry after its TTL. Tests can also expire all tokens, answer the next
//! requests with an error status, or never answer token PUTs.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, HeaderMap, Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};

/// What the fake saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub puts: u32,
    /// GETs that reached the token check (after any injected failure).
    pub gets: u32,
    pub unauthorized: u32,
    /// Requests answered with the injected status.
    pub throttled: u32,
    pub ttls_asked: Vec<u32>,
    /// Paths of GETs answered 200 or 404, under /latest/.
    pub paths: Vec<String>,
}

#[derive(Default)]
struct State {
    data: HashMap<String, String>,
    tokens: HashMap<String, Instant>,
    issued: u32,
    fail_next: u32,
    fail_status: u16,
    reject_tokens: bool,
    stall_puts: bool,
    stats: Stats,
}

pub struct FakeImds {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeImds {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        FakeImds { addr, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `body` at `/latest/<path>`.
    pub fn set(&self, path: &str, body: &str) {
        self.state.lock().unwrap().data.insert(path.to_string(), body.to_string());
    }

    /// Every token issued so far becomes invalid (as after a stop/start).
    pub fn expire_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    /// The next `n` requests, PUT or GET, get `status`.
    pub fn throttle(&self, n: u32, status: u16) {
        let mut s = self.state.lock().unwrap();
        s.fail_next = n;
        s.fail_status = status;
    }

    pub fn reject_all_tokens(&self) {
        self.state.lock().unwrap().reject_tokens = true;
    }

    /// Token PUTs get no answer, as when the hop limit drops the response.
    pub fn stall_puts(&self) {
        self.state.lock().unwrap().stall_puts = true;
    }

    pub fn stats(&self) -> Stats {
        self.state.lock().unwrap().stats.clone()
    }

    pub fn clear_stats(&self) {
        self.state.lock().unwrap().stats = Stats::default();
    }
}

async fn handle(st: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body, stall) = st.lock().unwrap().answer(req.method(), req.uri().path(), req.headers());
    if stall {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let mut r = Response::builder().status(status).header("content-type", "text/plain");
    // As IMDS does: a token comes with its TTL (the AWS SDK requires it).
    if status == 200 && req.method() == Method::PUT {
        if let Some(ttl) = req.headers().get("x-aws-ec2-metadata-token-ttl-seconds") {
            r = r.header("x-aws-ec2-metadata-token-ttl-seconds", ttl.clone());
        }
    }
    r.body(Full::new(Bytes::from(body))).unwrap()
}

impl State {
    fn answer(&mut self, method: &Method, path: &str, headers: &HeaderMap) -> (u16, String, bool) {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            self.stats.throttled += 1;
            return (self.fail_status, String::new(), false);
        }
        let now = Instant::now();
        match (method, path) {
            (&Method::PUT, "/latest/api/token") => {
                self.stats.puts += 1;
                if headers.contains_key("x-forwarded-for") {
                    return (403, String::new(), false);
                }
                let ttl = headers
                    .get("x-aws-ec2-metadata-token-ttl-seconds")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|t| (1..=21_600).contains(t));
                let Some(ttl) = ttl else { return (400, String::new(), false) };
                self.stats.ttls_asked.push(ttl);
                if self.stall_puts {
                    return (200, String::new(), true);
                }
                self.issued += 1;
                let token = format!("AQAEAfake{}==", self.issued);
                self.tokens.insert(token.clone(), now + Duration::from_secs(ttl.into()));
                (200, token, false)
            }
            (&Method::GET, p) if p.starts_with("/latest/") => {
                self.stats.gets += 1;
                let token = headers.get("x-aws-ec2-metadata-token").and_then(|v| v.to_str().ok());
                let valid = !self.reject_tokens && token.and_then(|t| self.tokens.get(t)).is_some_and(|exp| now < *exp);
                if !valid {
                    self.stats.unauthorized += 1;
                    return (401, String::new(), false);
                }
                let rel = &p["/latest/".len()..];
                self.stats.paths.push(rel.to_string());
                match self.data.get(rel) {
                    Some(v) => (200, v.clone(), false),
                    None => (404, "Not Found".into(), false),
                }
            }
            _ => (405, String::new(), false),
        }
    }
}
