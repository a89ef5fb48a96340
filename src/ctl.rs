//! `keepalive-lab ctl`: the proxy's control API from a shell, so that a test script changes a timer,
//! lists the open streams, cuts one at the moment it chooses or follows the events without writing
//! JSON by hand. Each command is one request to the admin listener (plain HTTP, where the proxy
//! serves it); `--json` prints the API's own answer instead of the summary.
//!
//! Exit codes: 0 done, 1 the admin listener could not be reached or refused the request (its
//! reason on stderr), 2 bad arguments.

use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::net::TcpStream;

use crate::stdout::{out, outln};

/// How long connecting to the admin listener, and then a whole answer, may take.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// The proxy's admin listener (PROXY_ADMIN_ADDR)
    #[arg(long, env = "KEEPALIVE_ADMIN", default_value = "http://127.0.0.1:9090")]
    admin: Uri,

    /// The admin token, when the proxy has one (PROXY_ADMIN_TOKEN)
    #[arg(long, env = "PROXY_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Print the API's JSON instead of a summary (events: one object a line)
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Clone, Subcommand)]
enum CtlCommand {
    /// The settings in force (* marks one changed since start), when a change to each applies,
    /// and what is fixed at start
    Show,
    /// Change settings, all or none: set idle=1s cut_style=reset. Keys: preset, the timers
    /// (connect, first_byte, idle, max_duration, header, keepalive, send), the faults (latency,
    /// bandwidth, limit_bytes, reset_after, blackhole_after, probability), buffering,
    /// buffering_ignore_header, compression, cut_style; values as in the proxy's env vars (0 or
    /// off disables). Open streams keep the settings they started with
    Set {
        #[arg(required = true, value_name = "KEY=VALUE", value_parser = parse_assignment)]
        changes: Vec<(String, String)>,
    },
    /// Go back to the settings the proxy started with
    Reset,
    /// The open streams: id, client, request, replica, age, bytes and chunks sent, silence since
    /// the last byte, and the seconds each armed timer has left
    Streams,
    /// Cut a stream (by the id `streams` shows) or all of them, now
    Cut {
        /// The stream to cut
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u64>,
        /// Cut every open stream
        #[arg(long)]
        all: bool,
        /// How the client sees the cut: truncate (curl exits 18), clean (looks complete, 0) or
        /// reset (56); default: the proxy's cut style in force
        #[arg(long, value_parser = ["truncate", "clean", "reset"])]
        style: Option<String>,
    },
    /// Follow what happens to every stream, one line an event, until interrupted
    Events,
}

/// A `KEY=VALUE` argument.
fn parse_assignment(argument: &str) -> Result<(String, String), String> {
    match argument.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("{argument:?} is not KEY=VALUE, like idle=1s")),
    }
}

/// Why a control request did not get through.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("--admin {0}: give the admin listener as http://HOST:PORT")]
    Url(Uri),
    #[error("cannot reach the admin listener at {admin}: {reason} (is the proxy running, with PROXY_ADMIN_ADDR there?)")]
    Unreachable { admin: String, reason: String },
    #[error("the admin listener at {0} needs its token: --token TOKEN or PROXY_ADMIN_TOKEN")]
    Unauthorized(String),
    #[error("refused ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the admin listener answered something that is not the control API's JSON: {0}")]
    Answer(String),
}

pub async fn run(args: CtlArgs) -> u8 {
    match command(&args).await {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("keepalive-lab ctl: {err}");
            1
        }
    }
}

async fn command(args: &CtlArgs) -> Result<(), CtlError> {
    let admin = Admin::new(args)?;
    match &args.command {
        CtlCommand::Show => {
            let config = admin.json(Method::GET, "/config", None).await?;
            if args.json {
                print_json(&config);
            } else {
                print_config(&config);
            }
        }
        CtlCommand::Set { changes } => {
            let body: Map<String, Value> = changes
                .iter()
                .map(|(key, value)| (key.clone(), Value::from(value.as_str())))
                .collect();
            let config = admin
                .json(Method::PATCH, "/config", Some(Value::Object(body)))
                .await?;
            if args.json {
                print_json(&config);
            } else {
                for (key, _) in changes {
                    let applies = config["applies_to"][key].as_str().unwrap_or("new requests");
                    outln!("{key} = {} (applies to {applies})", show(&config[key]));
                }
            }
        }
        CtlCommand::Reset => {
            let config = admin.json(Method::POST, "/config/reset", None).await?;
            if args.json {
                print_json(&config);
            } else {
                outln!("settings reset to those at start");
            }
        }
        CtlCommand::Streams => {
            let streams = admin.json(Method::GET, "/streams", None).await?;
            if args.json {
                print_json(&streams);
            } else {
                print_streams(&streams);
            }
        }
        CtlCommand::Cut { id, all, style } => {
            let path = match (id, all) {
                (Some(id), false) => format!("/streams/{id}/cut"),
                _ => "/streams/cut".to_owned(),
            };
            let body = style
                .as_ref()
                .map(|style| serde_json::json!({"style": style}));
            let cut = admin.json(Method::POST, &path, body).await?;
            if args.json {
                print_json(&cut);
            } else {
                let ids: Vec<String> = cut["cut"]
                    .as_array()
                    .map(|ids| ids.iter().map(ToString::to_string).collect())
                    .unwrap_or_default();
                let style = cut["style"].as_str().unwrap_or("?");
                match ids.len() {
                    0 => outln!("no open stream to cut"),
                    1 => outln!("cut stream {} ({style})", ids[0]),
                    n => outln!("cut {n} streams ({style}): {}", ids.join(" ")),
                }
            }
        }
        CtlCommand::Events => admin.follow(args.json).await?,
    }
    Ok(())
}

/// The admin listener, and the token to show it.
struct Admin {
    authority: String,
    base: String,
    token: Option<String>,
}

impl Admin {
    fn new(args: &CtlArgs) -> Result<Self, CtlError> {
        let url = &args.admin;
        if url.scheme_str().is_some_and(|scheme| scheme != "http") {
            return Err(CtlError::Url(url.clone()));
        }
        let Some(authority) = url.authority() else {
            return Err(CtlError::Url(url.clone()));
        };
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            authority: format!("{}:{port}", authority.host()),
            base: url.path().trim_end_matches('/').to_owned(),
            token: args.token.clone().filter(|token| !token.is_empty()),
        })
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> CtlError {
        CtlError::Unreachable {
            admin: format!("http://{}", self.authority),
            reason: reason.to_string(),
        }
    }

    /// Sends one request; the response's head, its body still to read.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<http::Response<hyper::body::Incoming>, CtlError> {
        let tcp = tokio::time::timeout(PATIENCE, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| self.unreachable("no connection within 10s"))?
            .map_err(|err| self.unreachable(err))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|err| self.unreachable(err))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|err| CtlError::Answer(err.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| self.unreachable(err))?;
        match response.status() {
            StatusCode::UNAUTHORIZED => {
                Err(CtlError::Unauthorized(format!("http://{}", self.authority)))
            }
            status if status.is_success() => Ok(response),
            status => {
                let body = read(response).await.unwrap_or_default();
                let message = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|error| {
                        let text = error["error"].as_str()?.to_owned();
                        // Most reasons already name what is accepted.
                        Some(match error["accepts"].as_str() {
                            Some(accepts) if !text.contains(accepts) => {
                                format!("{text} (accepts {accepts})")
                            }
                            _ => text,
                        })
                    })
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
                Err(CtlError::Refused { status, message })
            }
        }
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CtlError> {
        let answer = tokio::time::timeout(PATIENCE, async {
            let response = self.send(method, path, body).await?;
            read(response).await
        })
        .await
        .map_err(|_| self.unreachable("no answer within 10s"))??;
        serde_json::from_slice(&answer).map_err(|err| CtlError::Answer(err.to_string()))
    }

    /// Prints each event of `/events` as it comes, until the feed ends.
    async fn follow(&self, json: bool) -> Result<(), CtlError> {
        let mut body = self.send(Method::GET, "/events", None).await?.into_body();
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| self.unreachable(err))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                print_event(&event, json);
            }
        }
        Ok(())
    }
}

async fn read(response: http::Response<hyper::body::Incoming>) -> Result<Bytes, CtlError> {
    response
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|err| CtlError::Answer(err.to_string()))
}

fn print_json(value: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// A value as `set` takes it back.
fn show(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn print_config(config: &Value) {
    let changed: Vec<&str> = config["changed"]
        .as_array()
        .map(|keys| keys.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(applies) = config["applies_to"].as_object() else {
        return print_json(config);
    };
    for (key, scope) in applies {
        let mark = if changed.contains(&key.as_str()) {
            "*"
        } else {
            " "
        };
        outln!(
            "{mark} {key:<24} {:<10} applies to {}",
            show(&config[key]),
            show(scope)
        );
    }
    if let Some(fixed) = config["fixed"].as_object() {
        outln!("fixed at start:");
        for (key, value) in fixed {
            outln!("  {key:<24} {}", show(value));
        }
    }
}

fn seconds(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |seconds| format!("{seconds:.1}s"))
}

fn print_streams(listing: &Value) {
    let streams = listing["streams"].as_array().cloned().unwrap_or_default();
    if streams.is_empty() {
        outln!("no open streams");
        return;
    }
    outln!(
        "{:>5}  {:<21}  {:<40}  {:<21}  {:>7}  {:>9}  {:>6}  {:>7}  TIMERS LEFT",
        "ID",
        "CLIENT",
        "REQUEST",
        "REPLICA",
        "AGE",
        "BYTES",
        "CHUNKS",
        "SILENT"
    );
    for stream in &streams {
        let request = format!(
            "{} {}",
            stream["method"].as_str().unwrap_or("?"),
            stream["path"].as_str().unwrap_or("?")
        );
        let timers = stream["timers"]
            .as_object()
            .map(|timers| {
                timers
                    .iter()
                    .map(|(timer, left)| format!("{timer} {}", seconds(left)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        outln!(
            "{:>5}  {:<21}  {:<40}  {:<21}  {:>7}  {:>9}  {:>6}  {:>7}  {}",
            show(&stream["id"]),
            stream["client"].as_str().unwrap_or("-"),
            request,
            stream["replica"].as_str().unwrap_or("-"),
            seconds(&stream["age"]),
            show(&stream["bytes"]),
            show(&stream["chunks"]),
            seconds(&stream["since_last_byte"]),
            if timers.is_empty() { "-" } else { &timers },
        );
    }
}

/// One server-sent event of the feed as a line: its time of day (UTC), the stream, the event and
/// its fields; or, with `json`, its data with the event's name added.
fn print_event(event: &str, json: bool) {
    let mut kind = "message";
    let mut data = String::new();
    for line in event.lines() {
        if let Some(name) = line.strip_prefix("event:") {
            kind = name.trim();
        } else if let Some(text) = line.strip_prefix("data:") {
            data.push_str(text.trim());
        }
    }
    // A comment (the feed's own keep-alive) carries no event.
    if data.is_empty() {
        return;
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(&data) else {
        return outln!("{kind} {data}");
    };
    if json {
        fields.insert("event".to_owned(), Value::from(kind));
        return outln!("{}", Value::Object(fields));
    }
    let at = fields
        .remove("at")
        .and_then(|at| at.as_f64())
        .unwrap_or(0.0);
    let stream = fields
        .remove("stream")
        .map(|id| show(&id))
        .unwrap_or_default();
    let elapsed = fields
        .remove("elapsed")
        .map(|elapsed| seconds(&elapsed))
        .unwrap_or_default();
    let day = at.rem_euclid(86_400.0);
    // Whole hours, minutes and milliseconds of a day fit any integer type.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (hours, minutes, secs) = (
        (day / 3600.0) as u32,
        ((day % 3600.0) / 60.0) as u32,
        day % 60.0,
    );
    out!("{hours:02}:{minutes:02}:{secs:06.3} #{stream:<4} {elapsed:>7} {kind:<12}");
    for (key, value) in fields {
        match value {
            Value::Null => {}
            Value::Number(number) if number.is_f64() => {
                out!(" {key}={:.3}", number.as_f64().unwrap_or(0.0));
            }
            value => out!(" {key}={}", show(&value)),
        }
    }
    outln!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_is_key_equals_value() {
        assert_eq!(
            parse_assignment("idle=1s"),
            Ok(("idle".to_owned(), "1s".to_owned()))
        );
        assert_eq!(
            parse_assignment("latency="),
            Ok(("latency".to_owned(), String::new()))
        );
        assert!(parse_assignment("idle").is_err());
        assert!(parse_assignment("=1s").is_err());
    }
}
