//! A minimal HTTP/1.0 client for the health endpoints of Patroni's REST API and etcd, and for
//! etcd's JSON gateway (`POST /v3/kv/...`), which answer small plain-HTTP requests. Nothing
//! else needs HTTP, so no HTTP client crate is pulled in for it.

use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response read; health answers are a few hundred bytes.
const MAX_RESPONSE: u64 = 64 * 1024;

/// The status code and body of `GET http://host:port/path`, within `timeout`.
pub async fn get(
    host: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let target = format!("http://{host}:{port}{path}");
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect((host, port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut raw).await?;
        parse_response(&raw)
    })
    .await
    .with_context(|| format!("no answer from {target} within {} s", timeout.as_secs_f32()))?
    .with_context(|| format!("GET {target}"))
}

/// The status code and body of `POST http://host:port/path` with a JSON `body`, within
/// `timeout`.
pub async fn post_json(
    host: &str,
    port: u16,
    path: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    send_json("POST", host, port, path, None, body, timeout).await
}

/// The status code and body of `METHOD http://host:port/path` with a JSON `body` and, when
/// given, HTTP basic auth `(user, password)`, within `timeout`.
pub async fn send_json(
    method: &str,
    host: &str,
    port: u16,
    path: &str,
    basic_auth: Option<(&str, &str)>,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    use base64::Engine as _;
    let target = format!("http://{host}:{port}{path}");
    let auth = basic_auth
        .map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect((host, port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {host}:{port}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut raw).await?;
        parse_response(&raw)
    })
    .await
    .with_context(|| format!("no answer from {target} within {} s", timeout.as_secs_f32()))?
    .with_context(|| format!("{method} {target}"))
}

/// Splits a raw HTTP response into its status code and body.
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let status_line = text.lines().next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    let (Some(version), Some(code)) = (words.next(), words.next()) else {
        bail!("not an HTTP response: {status_line:?}");
    };
    if !version.starts_with("HTTP/") {
        bail!("not an HTTP response: {status_line:?}");
    }
    let code: u16 = code
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// True when something accepts TCP connections on `host:port`.
pub async fn listening(host: &str, port: u16, timeout: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .with_context(|| {
            format!(
                "no answer on {host}:{port} within {} s",
                timeout.as_secs_f32()
            )
        })?
        .with_context(|| format!("nothing listening on {host}:{port}"))?;
    Ok(())
}

/// The address to reach a local server listening on `listen` (a wildcard means loopback).
pub fn local_host(listen: &str) -> &str {
    match listen {
        "" | "0.0.0.0" | "*" | "::" => "127.0.0.1",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_split_into_status_and_body() {
        let (code, body) = parse_response(
            b"HTTP/1.0 503 Service Unavailable\r\nServer: x\r\n\r\n{\"state\": \"starting\"}",
        )
        .unwrap();
        assert_eq!(code, 503);
        assert_eq!(body, "{\"state\": \"starting\"}");
        assert!(parse_response(b"SSH-2.0-OpenSSH").is_err());
    }

    #[tokio::test]
    async fn get_reads_a_real_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = socket.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /health HTTP/1.0\r\n"));
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
        });
        let (code, body) = get("127.0.0.1", port, "/health", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((code, body.as_str()), (200, "ok"));
    }

    #[tokio::test]
    async fn listening_tells_a_bound_port_from_a_free_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listening("127.0.0.1", port, Duration::from_secs(5))
            .await
            .is_ok());
        drop(listener);
        let err = listening("127.0.0.1", port, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains(&port.to_string()), "{err:#}");
    }
}
