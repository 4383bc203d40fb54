//! Helpers of the ingestion tests: an in-process server, HTTP calls, and reading a
//! topic back with rskafka.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use gamestream::config::Config;
use gamestream::daemon::{self, Running};
use gamestream::kafka;
use gamestream::shutdown::Shutdown;
use rskafka::client::partition::UnknownTopicHandling;
use serde_json::Value;

/// A daemon started in this process on a free port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    shutdown: Shutdown,
    running: Option<Running>,
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    /// The body as JSON (panics with the text when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The `error` of a `{"status":"error","error":…}` answer.
    pub fn error(&self) -> String {
        let body = self.json();
        assert_eq!(body["status"], "error", "{}", self.text);
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error text: {}", self.text))
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let shutdown = Shutdown::new();
        let running = daemon::start(config, false, shutdown.clone())
            .await
            .expect("the daemon starts");
        // A fresh connection per request: the server closes a connection whose request
        // body it refused without reading, and a pooled client that sends the next
        // request on it just then gets IncompleteMessage (seen once in the bad-input
        // matrix). Connection reuse is not what these tests are about.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(0)
            .build()
            .expect("http client");
        Self {
            addr: running.http_addr,
            http,
            shutdown,
            running: Some(running),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` as application/json.
    pub async fn post(&self, path: &str, body: &str) -> Answer {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        Answer {
            status,
            headers,
            text,
        }
    }

    /// Sends raw bytes on a new connection and returns the raw answer (for requests
    /// a client library would not send, such as a body that never completes).
    pub async fn raw(&self, request: &[u8], wait: Duration) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        stream.write_all(request).await.expect("write");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    out.extend_from_slice(&buf[..n]);
                    if complete_response(&out) {
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Triggers shutdown and waits for the HTTP server to drain and the producer to flush.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Whether `bytes` hold a whole HTTP/1.1 response with a Content-Length body.
fn complete_response(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
    });
    length.is_some_and(|n| body.len() >= n)
}

/// A record read back from the topic.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Value,
    pub headers: BTreeMap<String, Vec<u8>>,
}

impl Consumed {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub fn event_id(&self) -> String {
        self.value["event_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Every record of `config.topics.player_events`, read up to each partition's high
/// watermark as Fetch reports it (the same answer on every broker).
pub async fn consume_all(config: &Config) -> Vec<Consumed> {
    let client = kafka::connect(&config.kafka).await.expect("kafka connects");
    let topic = &config.topics.player_events;
    let partitions = kafka::partition_count(&client, topic)
        .await
        .expect("topic exists");
    let mut out = Vec::new();
    for partition in 0..partitions {
        let pc = client
            .partition_client(topic.clone(), partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let mut offset = 0;
        let mut empty_fetches = 0;
        loop {
            let (records, high_watermark) = pc
                .fetch_records(offset, 1..50_000_000, 100)
                .await
                .expect("fetch");
            for r in &records {
                out.push(Consumed {
                    partition,
                    offset: r.offset,
                    key: r.record.key.clone(),
                    value: serde_json::from_slice(r.record.value.as_deref().unwrap_or_default())
                        .expect("record values are JSON"),
                    headers: r.record.headers.clone(),
                });
            }
            match records.last() {
                Some(last) => offset = last.offset + 1,
                None => {
                    empty_fetches += 1;
                    assert!(
                        empty_fetches < 50,
                        "partition {partition}: no records at {offset} below the high watermark {high_watermark}"
                    );
                }
            }
            if offset >= high_watermark {
                break;
            }
        }
    }
    out
}

/// A valid event submission.
pub fn event_json(event_type: &str, player: &str, data: &str) -> String {
    format!(
        r#"{{"event_type":"{event_type}","player_id":"{player}","game_id":"game-1","timestamp":"2024-01-15T10:30:00Z","data":{data}}}"#
    )
}
