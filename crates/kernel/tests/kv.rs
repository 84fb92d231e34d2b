//! `kv::Bucket` against a real nats-server: the compare-and-set loop of `modify` loses no write
//! when writers race, and `create`/`update` report a lost race as `KvError::Conflict`.
#![cfg(feature = "testkit")]

use whale_kernel::config::NatsConfig;
use whale_kernel::kv::{Bucket, KvError, Step, Ttl};
use whale_kernel::testkit::NatsServer;
use whale_kernel::{subjects, Config, Nats};

#[tokio::test]
async fn racing_modifies_lose_no_write_and_conflicts_are_typed() {
    let server = NatsServer::start();
    let cfg = Config {
        nats: NatsConfig {
            urls: vec![server.url()],
            ..Default::default()
        },
        ..Default::default()
    };
    let nats = Nats::connect(&cfg.nats, "kv-test").await.expect("connect");
    whale_kernel::setup::setup(&nats, &cfg)
        .await
        .expect("setup");
    let kv = Bucket::open(&nats, subjects::KV_STATE).await.expect("open");

    let bump = |kv: Bucket| async move {
        kv.modify("test.counter", |cur| {
            let n: u64 = cur.map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
            Step::Write {
                value: (n + 1).to_string().into(),
                ttl: Ttl::Bucket,
                then: n + 1,
            }
        })
        .await
        .expect("modify")
    };
    let tasks: Vec<_> = (0..20).map(|_| tokio::spawn(bump(kv.clone()))).collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.sort();
    assert_eq!(seen, (1..=20).collect::<Vec<u64>>(), "each write won once");
    assert_eq!(
        kv.get("test.counter").await.unwrap().as_deref(),
        Some(&b"20"[..])
    );

    let kept = kv
        .modify("test.counter", |_| Step::<&str>::Keep("kept"))
        .await
        .unwrap();
    assert_eq!(kept, "kept");
    let rev = kv.entry("test.counter").await.unwrap().unwrap().revision;
    assert!(matches!(
        kv.create("test.counter", "x".into(), Ttl::Bucket).await,
        Err(KvError::Conflict)
    ));
    assert!(matches!(
        kv.update("test.counter", "x".into(), rev - 1, Ttl::Bucket)
            .await,
        Err(KvError::Conflict)
    ));
    kv.update("test.counter", "y".into(), rev, Ttl::Bucket)
        .await
        .expect("update at the current revision");
    kv.delete("test.counter").await.unwrap();
    assert_eq!(kv.get("test.counter").await.unwrap(), None);
    kv.create("test.counter", "z".into(), Ttl::Bucket)
        .await
        .expect("a deleted key counts as nothing");
    assert_eq!(
        kv.keys("test.").await.unwrap(),
        vec!["test.counter".to_owned()]
    );
}
