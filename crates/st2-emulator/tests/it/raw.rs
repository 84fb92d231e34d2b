//! Wire details checked with plain HTTP, where neither the CLI nor whale's client looks:
//! prefixes and trailing slashes, falsy fields dropped, paging headers, error shapes, and the
//! per-execution output stream.

use crate::harness::{Emulator, KEY};
use serde_json::{json, Value};

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(emu: &Emulator) -> Self {
        Self {
            base: emu.base(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("St2-Api-Key", KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, headers, resp.text().await.unwrap())
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (s, _, text) = self.call(method, path, body).await;
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn is_st2_timestamp(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    s.len() == 27 && s.ends_with('Z') && s.as_bytes()[10] == b'T' && s.as_bytes()[19] == b'.'
}

#[tokio::test]
async fn execution_document_shape_and_prefixes() {
    let emu = Emulator::start();
    let api = Api::new(&emu);
    let (s, created) = api
        .json(
            reqwest::Method::POST,
            "/api/v1/executions",
            Some(json!({"action": "ops.long", "parameters": {}})),
        )
        .await;
    assert_eq!(s, 201);
    let obj = created.as_object().unwrap();
    for absent in [
        "result",
        "end_timestamp",
        "elapsed_seconds",
        "parameters",
        "children",
        "parent",
    ] {
        assert!(
            !obj.contains_key(absent),
            "falsy {absent} must be dropped: {created}"
        );
    }
    assert!(
        is_st2_timestamp(&created["start_timestamp"]),
        "{}",
        created["start_timestamp"]
    );
    assert_eq!(created["action"]["uid"], "action:ops:long");
    assert_eq!(created["runner"]["name"], "local-shell-cmd");
    assert!(created["runner"]["runner_parameters"]["timeout"].is_object());
    assert_ne!(created["liveaction"]["id"], created["id"]);
    let id = created["id"].as_str().unwrap();
    assert!(created["web_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/#/history/{id}/general")));

    for path in ["/api/v1/executions/", "/v1/executions", "/v1/executions/"] {
        let (s, h, _) = api
            .call(reqwest::Method::GET, &format!("{path}?limit=1"), None)
            .await;
        assert_eq!(s, 200, "{path}");
        assert_eq!(
            (
                h["x-total-count"].to_str().unwrap(),
                h["x-limit"].to_str().unwrap()
            ),
            ("1", "1")
        );
    }
    let (s, v) = api
        .json(reqwest::Method::GET, "/api/v1/executions?limit=0", None)
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = api
        .json(
            reqwest::Method::GET,
            &format!("/api/v1/executions/{id}?exclude_attributes=action"),
            None,
        )
        .await;
    assert_eq!(
        (s, v["faultstring"].as_str().unwrap()),
        (
            400,
            "Invalid or unsupported exclude attribute specified: action"
        )
    );
    let (_, v) = api
        .json(
            reqwest::Method::GET,
            &format!("/api/v1/executions/{id}?include_attributes=status"),
            None,
        )
        .await;
    assert!(v["status"].is_string(), "{v}");
    assert!(v.get("log").is_none() && v["id"] == id, "{v}");
    let (s, v) = api
        .json(
            reqwest::Method::GET,
            "/api/v1/runnertypes/?name=orquesta",
            None,
        )
        .await;
    assert_eq!(
        (s, v.as_array().unwrap().len(), v[0]["name"].as_str()),
        (200, 1, Some("orquesta"))
    );
    let (s, v) = api
        .json(reqwest::Method::GET, "/api/v1/actions/nope.nope", None)
        .await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = api.json(reqwest::Method::GET, "/api/v1/", None).await;
    assert_eq!((s, v["version"].as_str()), (200, Some("3.9.0")));

    crate::harness::eventually(20, "running", || async {
        api.json(
            reqwest::Method::GET,
            &format!("/api/v1/executions/{id}"),
            None,
        )
        .await
        .1["status"]
            == "running"
    })
    .await;
    let (s, v) = api
        .json(
            reqwest::Method::DELETE,
            &format!("/api/v1/executions/{id}"),
            None,
        )
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("canceling")));
    let (s, v) = api
        .json(
            reqwest::Method::DELETE,
            &format!("/api/v1/executions/{id}"),
            None,
        )
        .await;
    assert_eq!(
        (s, v["faultstring"].as_str()),
        (200, Some("Action cannot be canceled. State = canceling."))
    );

    let anon = reqwest::get(format!("{}/api/v1/executions", emu.base()))
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    let body: Value = anon.json().await.unwrap();
    assert_eq!(
        body,
        json!({"faultstring": "Unauthorized - One of Token or API key required."})
    );
}

#[tokio::test]
async fn output_stream_replays_and_ends_with_eof() {
    let emu = Emulator::start();
    let api = Api::new(&emu);
    let (_, e) = api
        .json(
            reqwest::Method::POST,
            "/api/v1/executions",
            Some(json!({"action": "ops.echo", "parameters": {"message": "m"}})),
        )
        .await;
    let id = e["id"].as_str().unwrap();
    let (_, _, text) = api
        .call(
            reqwest::Method::GET,
            &format!("/stream/v1/executions/{id}/output"),
            None,
        )
        .await;
    let frames: Vec<&str> = text
        .split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .collect();
    assert_eq!(frames.len(), 3, "{text}");
    assert!(
        frames[0].starts_with("event: st2.execution.output__create\ndata: {"),
        "{text}"
    );
    assert!(frames[0].contains("\"data\":\"hello\\n\""), "{text}");
    assert_eq!(frames[2], "event: EOF\ndata: \"\"");
    let (s, _, out) = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/executions/{id}/output?output_type=stdout"),
            None,
        )
        .await;
    assert_eq!((s, out.as_str()), (200, "hello\nworld\n"));
}
