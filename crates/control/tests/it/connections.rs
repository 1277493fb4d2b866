//! A slowloris flood against the control plane's listener (connection limit 16): the oldest
//! trickling connections are evicted and real requests are still served.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_control::{Control, Settings};
use ferry_sim::SimConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::harness::key_pem;
use crate::inproc::InProc;

async fn trickler(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"POST /route/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .ok()?;
    Some(s)
}

#[tokio::test]
async fn a_slowloris_flood_cannot_starve_the_control_plane() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut settings = Settings::for_url(format!("http://{addr}"));
    settings.signing_key_pem = Some(key_pem());
    settings.connections = ferry_serve::Limits::new("control")
        .max_connections(16)
        .header_timeout(Duration::from_secs(600))
        .idle_timeout(Duration::from_secs(600));
    let control = Control::new(settings, InProc::new(SimConfig::default(), false))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let done = tokio::spawn(ferry_control::run(
        listener,
        control,
        stop.clone().cancelled_owned(),
    ));

    let mut first = Vec::new();
    for _ in 0..24 {
        first.push(trickler(addr).await.unwrap());
    }
    let more = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..100 {
            held.extend(trickler(addr).await);
            tokio::task::yield_now().await;
        }
        held
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for _ in 0..5 {
        let r = http
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .expect("a real client was starved by the flood");
        assert_eq!(r.status(), 200);
    }
    let _held = more.await.unwrap();
    for s in first.iter_mut().take(8) {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "an old trickler was never evicted"
        );
    }
    stop.cancel();
    done.await.unwrap().unwrap();
}
