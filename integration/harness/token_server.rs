//! A token server for distribution's `auth.token`, in the test process.
//!
//! HTTPS (tokio-rustls + hyper 1). `GET /token?service=..&scope=..` with valid Basic
//! credentials, or `POST /token` with an OAuth2 password grant, gets an ES256 JWT whose
//! `x5c` header holds a certificate issued by the server's CA (the registry's
//! `rootcertbundle`), granting exactly the actions asked for in `scope`. Anonymous
//! callers get a token granting nothing; wrong credentials get 401. Every request is
//! counted and recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::ca::{Ca, LOOPBACK_NAMES};
use super::rt::{server_tls, Background};

/// One request as the token server saw it.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    /// The user whose valid credentials came with it; `None` when anonymous.
    pub user: Option<String>,
    pub scopes: Vec<String>,
    pub service: String,
    pub granted: bool,
}

struct State {
    users: HashMap<String, String>,
    first_user: Option<(String, String)>,
    signer_der: Vec<u8>,
    signer_key_pem: String,
    requests: Mutex<Vec<TokenRequest>>,
}

pub struct TokenServer {
    addr: SocketAddr,
    ca: Arc<Ca>,
    state: Arc<State>,
    _runtime: Background,
}

const SERVICE: &str = "portcullis-test-registry";
const ISSUER: &str = "portcullis-test-token-issuer";

impl TokenServer {
    /// Starts a token server that knows `users` as `(name, password)` pairs.
    pub fn start(users: &[(&str, &str)]) -> TokenServer {
        let ca = Ca::new("token");
        let signer = ca.issue_signer("portcullis test token signer");
        let tls_leaf = ca.issue(&LOOPBACK_NAMES);
        let state = Arc::new(State {
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            first_user: users.first().map(|(u, p)| (u.to_string(), p.to_string())),
            signer_der: signer.der,
            signer_key_pem: signer.key_pem,
            requests: Mutex::new(Vec::new()),
        });
        let runtime = Background::new("token-server");
        let tls =
            tokio_rustls::TlsAcceptor::from(server_tls(&tls_leaf.cert_pem, &tls_leaf.key_pem));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the token server");
        let addr = listener.local_addr().expect("token server address");
        let serving = state.clone();
        runtime.handle().spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (tls, state) = (tls.clone(), serving.clone());
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| answer(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenServer {
            addr,
            ca,
            state,
            _runtime: runtime,
        }
    }

    /// `https://127.0.0.1:<port>/token`
    pub fn realm(&self) -> String {
        format!("https://{}/token", self.addr)
    }

    /// `127.0.0.1:<port>`, what portcullis's `token_hosts` lists.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn service(&self) -> &'static str {
        SERVICE
    }

    pub fn issuer(&self) -> &'static str {
        ISSUER
    }

    /// The CA behind both the server's TLS certificate and its token signer.
    pub fn ca(&self) -> Arc<Ca> {
        self.ca.clone()
    }

    /// The first `(user, password)` it was started with.
    pub fn first_user(&self) -> Option<(String, String)> {
        self.state.first_user.clone()
    }

    /// How many requests arrived so far.
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().expect("token log").len()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().expect("token log").clone()
    }
}

type Answer = hyper::Response<Full<bytes::Bytes>>;

async fn answer(state: Arc<State>, req: hyper::Request<Incoming>) -> Result<Answer, hyper::Error> {
    let method = req.method().to_string();
    let basic = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(decode_basic);
    let query = req.uri().query().unwrap_or("").to_string();
    let body = req.into_body().collect().await?.to_bytes();
    let mut params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    params.extend(form_urlencoded::parse(&body).into_owned());
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let credentials = basic.or_else(|| Some((param("username")?, param("password")?)));
    // GET sends one `scope` per parameter; the OAuth2 POST sends them space-separated.
    let scopes: Vec<String> = params
        .iter()
        .filter(|(n, _)| n == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let user = match credentials {
        Some((user, password)) if state.users.get(&user) == Some(&password) => Some(user),
        Some(_) => {
            record(&state, method, None, scopes, param("service"), false);
            return Ok(json(
                401,
                r#"{"details":"invalid credentials"}"#.to_string(),
            ));
        }
        None => None,
    };
    let granted = user.is_some();
    let token = sign(&state, user.as_deref().unwrap_or(""), &scopes, granted);
    record(&state, method, user, scopes, param("service"), granted);
    let body = serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 });
    Ok(json(200, body.to_string()))
}

fn record(
    state: &State,
    method: String,
    user: Option<String>,
    scopes: Vec<String>,
    service: Option<String>,
    granted: bool,
) {
    let request = TokenRequest {
        method,
        user,
        scopes,
        service: service.unwrap_or_default(),
        granted,
    };
    state.requests.lock().expect("token log").push(request);
}

fn json(status: u16, body: String) -> Answer {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .expect("token answer")
}

fn decode_basic(value: &str) -> Option<(String, String)> {
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[derive(serde::Serialize)]
struct Claims {
    iss: &'static str,
    sub: String,
    aud: &'static str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Access>,
}

#[derive(serde::Serialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

/// `repository:team/app:pull,push` -> the access entry; granted actions only if `granted`.
fn access(scope: &str, granted: bool) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions = if granted {
        actions.split(',').map(str::to_string).collect()
    } else {
        Vec::new()
    };
    Some(Access {
        kind: kind.to_string(),
        name: name.to_string(),
        actions,
    })
}

fn sign(state: &State, subject: &str, scopes: &[String], granted: bool) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = Claims {
        iss: ISSUER,
        sub: subject.to_string(),
        aud: SERVICE,
        exp: now + 300,
        nbf: now - 10,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        access: if granted {
            scopes.iter().filter_map(|s| access(s, true)).collect()
        } else {
            Vec::new()
        },
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![
        base64::engine::general_purpose::STANDARD.encode(&state.signer_der)
    ]);
    let key = jsonwebtoken::EncodingKey::from_ec_pem(state.signer_key_pem.as_bytes())
        .expect("signer key");
    jsonwebtoken::encode(&header, &claims, &key).expect("sign token")
}
