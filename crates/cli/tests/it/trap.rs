//! Every host the user did not name, for a `ferry` child process: an HTTP proxy on 127.0.0.1
//! that records the request line of each connection (`CONNECT console.vast.ai:443 HTTP/1.1`
//! for https) and refuses it with 403, so nothing goes further. [`Trap::env`] sends every host
//! but 127.0.0.1 / localhost through it (reqwest honours the proxy variables).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

pub struct Trap {
    pub url: String,
    hits: Arc<Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Trap {
    pub async fn start() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let h = hits.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                tokio::spawn(refuse(sock, h.clone()));
            }
        });
        Trap { url, hits, accept }
    }

    /// The request line of every connection that reached the trap.
    pub fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }

    /// Environment that sends a child's requests for any host but 127.0.0.1 to the trap.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env: Vec<(&'static str, String)> = [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ]
        .into_iter()
        .map(|k| (k, self.url.clone()))
        .collect();
        env.push(("NO_PROXY", "127.0.0.1,localhost".into()));
        env.push(("no_proxy", "127.0.0.1,localhost".into()));
        env
    }
}

async fn refuse(mut sock: TcpStream, hits: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text
        .lines()
        .next()
        .unwrap_or("<no request line>")
        .to_owned();
    hits.lock().unwrap().push(line);
    let _ = sock
        .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
}
