//! The embedded backend: a tantivy index in `WHALE_INDEX_DIR`, no server needed. One process owns
//! the writer (tantivy allows one per directory; the index stage takes it); any number of other
//! processes (`whale events search`, `whale trace`) open it read-only and see every commit.
//!
//! Writes go through one writer thread that groups whatever batches are waiting into one commit
//! (group commit): a batch is acknowledged only after the commit that holds it, and a redelivered
//! document replaces its earlier copy (delete by id, then add, in the same commit).

pub(crate) mod schema;
pub mod tokenizer;
pub(crate) mod translate;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::RangeQuery;
use tantivy::schema::Value as _;
use tantivy::{
    DateTime, Index, IndexReader, IndexWriter, Order as TOrder, ReloadPolicy, TantivyDocument, Term,
};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use self::schema::{date, Fields};
use crate::backend::{Backend, Error, Hits, Order, Search, WriteReport};
use crate::doc::Doc;

/// Memory the writer may use before it flushes a segment.
const WRITER_HEAP: usize = 128 * 1024 * 1024;
/// Most documents grouped into one commit.
const GROUP_MAX: usize = 50_000;
/// How long the writer waits for more batches before committing. A commit has a fixed cost
/// (segment files written and fsynced, readers reopened) that dominates at the worker's batch
/// size: measured on 2 busy cores, 512-document commits ran ~6k docs/s, 5,000-document ones ~32k.
/// Waiting a little lets concurrent worker loops share one commit.
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);
/// Largest result page (as OpenSearch's default `index.max_result_window`).
pub const MAX_LIMIT: usize = 10_000;

/// Fewer, larger merges than tantivy's default (8 segments, 10k-doc first layer): profiled under
/// `whale bench pipeline`, merging postings took ~23% of a one-process pipeline's CPU. Each
/// document is now rewritten about half as often; searches see at most a few dozen segments.
fn merge_policy() -> tantivy::merge_policy::LogMergePolicy {
    let mut p = tantivy::merge_policy::LogMergePolicy::default();
    p.set_min_num_segments(16);
    p.set_min_layer_size(50_000);
    p
}

enum Job {
    Write(
        Vec<(String, TantivyDocument)>,
        oneshot::Sender<Result<(), String>>,
    ),
    Expire(DateTime, oneshot::Sender<Result<u64, String>>),
}

/// The embedded index.
pub struct Embedded {
    shared: Arc<Shared>,
    dir: PathBuf,
    writer: Option<Mutex<mpsc::Sender<Job>>>,
}

/// What searches need, shared with blocking tasks.
struct Shared {
    index: Index,
    reader: IndexReader,
    fields: Arc<Fields>,
    /// Another process writes: reload before each search.
    reload: std::sync::atomic::AtomicBool,
}

impl Embedded {
    /// Opens (creating if needed) the index in `dir` for writing. Fails if another process holds
    /// the writer.
    pub fn open(dir: &Path) -> Result<Embedded, Error> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Invalid(format!(
                "cannot create the index directory {}: {e}",
                dir.display()
            ))
        })?;
        let mmap = MmapDirectory::open(dir)
            .map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
        // An existing index is opened with the schema it was made with: one made before the CJK
        // tokenizer keeps tantivy's `default` for `text` (documents and queries alike), so it
        // still answers as before; a new index gets `whale_text` (docs/search.md "Upgrading").
        let opened = if dir.join("meta.json").exists() {
            Index::open(mmap)
        } else {
            Index::create(mmap, Fields::schema(), tantivy::IndexSettings::default())
        };
        let index = opened.map_err(|e| {
            Error::Invalid(format!(
                "the index in {} cannot be opened ({e}); if it was made by another whale version, move it away",
                dir.display()
            ))
        })?;
        let mut e = Self::with_index(index, dir)?;
        e.shared
            .reload
            .store(false, std::sync::atomic::Ordering::Relaxed);
        // One indexing thread: one segment per commit (two threads made two, and ran slower).
        let writer: IndexWriter = e.shared.index.writer_with_num_threads(1, WRITER_HEAP).map_err(|err| match err {
            tantivy::TantivyError::LockFailure(..) => Error::Invalid(format!(
                "another process is writing the index in {} (only one `whale run` with the index stage \
                 may use one WHALE_INDEX_DIR; searching needs no writer)",
                dir.display()
            )),
            other => Error::Other(other.to_string()),
        })?;
        writer.set_merge_policy(Box::new(merge_policy()));
        let (tx, rx) = mpsc::channel();
        let (reader, fields) = (e.shared.reader.clone(), e.shared.fields.clone());
        std::thread::Builder::new()
            .name("whale-index-writer".into())
            .spawn(move || writer_loop(writer, reader, fields, rx))
            .map_err(|err| Error::Other(format!("cannot start the index writer thread: {err}")))?;
        e.writer = Some(Mutex::new(tx));
        Ok(e)
    }

    /// Opens the index in `dir` for searching only (any number of processes may).
    pub fn open_read_only(dir: &Path) -> Result<Embedded, Error> {
        if !dir.join("meta.json").exists() {
            return Err(Error::Invalid(format!(
                "there is no index in {}: run the index stage (`whale run --stages index`, which needs the \
                 same WHALE_INDEX_DIR) or point WHALE_INDEX_DIR / WHALE_OPENSEARCH_URL at where events are",
                dir.display()
            )));
        }
        let index = Index::open_in_dir(dir)
            .map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
        Self::with_index(index, dir)
    }

    fn with_index(index: Index, dir: &Path) -> Result<Embedded, Error> {
        index
            .tokenizers()
            .register(tokenizer::NAME, tokenizer::analyzer());
        let fields = Fields::new(index.schema()).map_err(|e| {
            Error::Invalid(format!(
                "the index in {} has another schema ({e}); move it away to start a new one",
                dir.display()
            ))
        })?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e: tantivy::TantivyError| Error::Other(e.to_string()))?;
        let shared = Shared {
            index,
            reader,
            fields: Arc::new(fields),
            reload: std::sync::atomic::AtomicBool::new(true),
        };
        Ok(Embedded {
            shared: Arc::new(shared),
            dir: dir.to_path_buf(),
            writer: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn send(&self, job: Job) -> Result<(), Error> {
        let w = self
            .writer
            .as_ref()
            .ok_or_else(|| Error::Invalid("this index was opened read-only".into()))?;
        let tx = w
            .lock()
            .map_err(|_| Error::Other("index writer lock poisoned".into()))?;
        tx.send(job)
            .map_err(|_| Error::Unavailable("the index writer thread stopped".into()))
    }
}

impl Shared {
    fn search(&self, s: &Search) -> Result<Hits, Error> {
        if self.reload.load(std::sync::atomic::Ordering::Relaxed) {
            // Another process writes: pick up its latest commit.
            self.reader
                .reload()
                .map_err(|e| Error::Other(e.to_string()))?;
        }
        let q = translate::Translator {
            fields: &self.fields,
            index: &self.index,
        }
        .query(&s.effective_query())?;
        let searcher = self.reader.searcher();
        let limit = s.limit.clamp(1, MAX_LIMIT);
        let (field, order) = match s.order {
            Order::NewestFirst => ("time", TOrder::Desc),
            Order::SeenFirst => ("seen", TOrder::Asc),
        };
        let top = TopDocs::with_limit(limit).order_by_fast_field::<DateTime>(field, order);
        let (top, total) = searcher
            .search(&*q, &(top, Count))
            .map_err(|e| Error::Other(format!("search failed: {e}")))?;
        let mut hits = Vec::with_capacity(top.len().min(s.limit));
        for (_, addr) in top.into_iter().take(s.limit) {
            let td: TantivyDocument = searcher
                .doc(addr)
                .map_err(|e| Error::Other(e.to_string()))?;
            let text = td
                .get_first(self.fields.doc)
                .and_then(|v| v.as_str())
                .unwrap_or("{}");
            match serde_json::from_str::<Doc>(text) {
                Ok(d) => hits.push(d),
                Err(e) => tracing::warn!("stored document does not parse: {e}"),
            }
        }
        sort_hits(&mut hits, s.order);
        Ok(Hits {
            total: total as u64,
            hits,
        })
    }
}

/// Final order of a page: by the sort field, ties by id (both backends do the same).
pub(crate) fn sort_hits(hits: &mut [Doc], order: Order) {
    match order {
        Order::NewestFirst => {
            hits.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.id.cmp(&b.id)))
        }
        Order::SeenFirst => hits.sort_by(|a, b| a.seen.cmp(&b.seen).then_with(|| a.id.cmp(&b.id))),
    }
}

fn writer_loop(
    mut w: IndexWriter,
    reader: IndexReader,
    fields: Arc<Fields>,
    rx: mpsc::Receiver<Job>,
) {
    let id_field = fields.keyword("id").expect("id field");
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut docs = job_len(&jobs[0]);
        let until = std::time::Instant::now() + LINGER;
        while docs < GROUP_MAX {
            match rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
                Ok(j) => {
                    docs += job_len(&j);
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let mut counts = Vec::with_capacity(jobs.len());
        let mut failed: Option<String> = None;
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                Job::Write(batch, reply) => {
                    if failed.is_none() {
                        for (id, d) in batch {
                            w.delete_term(Term::from_field_text(id_field, &id));
                            if let Err(e) = w.add_document(d) {
                                failed = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    counts.push(0);
                    replies.push(Reply::Write(reply));
                }
                Job::Expire(cutoff, reply) => {
                    let q = RangeQuery::new(
                        std::ops::Bound::Unbounded,
                        std::ops::Bound::Excluded(Term::from_field_date(fields.seen, cutoff)),
                    );
                    let n = reader.searcher().search(&q, &Count).unwrap_or(0) as u64;
                    if failed.is_none() {
                        if let Err(e) = w.delete_query(Box::new(q)) {
                            failed = Some(e.to_string());
                        }
                    }
                    counts.push(n);
                    replies.push(Reply::Expire(reply));
                }
            }
        }
        let result = match failed {
            None => w.commit().map(|_| ()).map_err(|e| e.to_string()),
            Some(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::error!("embedded index commit failed: {e}");
            let _ = w.rollback();
        }
        if let Err(e) = reader.reload() {
            tracing::warn!("embedded index reader reload failed: {e}");
        }
        for (reply, n) in replies.into_iter().zip(counts) {
            match reply {
                Reply::Write(r) => {
                    let _ = r.send(result.clone());
                }
                Reply::Expire(r) => {
                    let _ = r.send(result.clone().map(|_| n));
                }
            }
        }
    }
    // The stage is gone: let merges finish so the directory is tidy.
    let _ = w.wait_merging_threads();
}

enum Reply {
    Write(oneshot::Sender<Result<(), String>>),
    Expire(oneshot::Sender<Result<u64, String>>),
}

fn job_len(j: &Job) -> usize {
    match j {
        Job::Write(b, _) => b.len(),
        Job::Expire(..) => 1,
    }
}

#[async_trait]
impl Backend for Embedded {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn write(&self, docs: Vec<Doc>) -> Result<WriteReport, Error> {
        if docs.is_empty() {
            return Ok(WriteReport::default());
        }
        let fields = self.shared.fields.clone();
        let batch = tokio::task::spawn_blocking(move || {
            docs.iter()
                .map(|d| (d.id.clone(), fields.to_tantivy(d)))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.send(Job::Write(batch, tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(WriteReport::default()),
            Ok(Err(e)) => Err(Error::Unavailable(format!(
                "embedded index commit failed: {e}"
            ))),
            Err(_) => Err(Error::Unavailable("the index writer thread stopped".into())),
        }
    }

    async fn search(&self, s: &Search) -> Result<Hits, Error> {
        let (shared, s) = (self.shared.clone(), s.clone());
        tokio::task::spawn_blocking(move || shared.search(&s))
            .await
            .map_err(|e| Error::Other(e.to_string()))?
    }

    async fn refresh(&self) -> Result<(), Error> {
        self.shared
            .reader
            .reload()
            .map_err(|e| Error::Other(e.to_string()))
    }

    async fn expire(&self, cutoff: OffsetDateTime) -> Result<u64, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Expire(date(cutoff), tx))?;
        match rx.await {
            Ok(r) => r.map_err(Error::Other),
            Err(_) => Err(Error::Unavailable("the index writer thread stopped".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parse;
    use tantivy::schema::{FieldEntry, FieldType, TEXT};

    /// An index made before the CJK tokenizer (`text` with tantivy's `default`) still opens, is
    /// written and searched with the tokenizer it was made with; a new one gets `whale_text`.
    #[tokio::test]
    async fn an_index_made_before_the_cjk_tokenizer_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tantivy::schema::Schema::builder();
        for (_, entry) in Fields::schema().fields() {
            match entry.field_type() {
                FieldType::Str(_) if entry.name() == "text" => {
                    b.add_field(FieldEntry::new_text("text".into(), TEXT))
                }
                _ => b.add_field(entry.clone()),
            };
        }
        Index::create_in_dir(dir.path(), b.build()).unwrap();

        let ev = serde_json::json!({"id": "e1", "event_type": "app.log", "source": "t",
            "time": "2026-11-28T01:00:00Z", "detail": {"message": "磁盘空间不足 disk full"}});
        let d = Doc::from_delivery(&whale_kernel::Delivery {
            subject: "whale.events.app.log".into(),
            payload: serde_json::to_vec(&ev).unwrap().into(),
            headers: vec![("Nats-Msg-Id".into(), "e1".into())],
            attempt: 1,
            stream_seq: 1,
            published: OffsetDateTime::now_utc(),
        });
        let search = |q: &str| Search::new(parse(q).unwrap());
        let fresh = tempfile::tempdir().unwrap();
        for (made_before, want_word) in [(true, 0), (false, 1)] {
            let path = if made_before {
                dir.path().to_path_buf()
            } else {
                fresh.path().to_path_buf()
            };
            let e = Embedded::open(&path).unwrap();
            let tok = e
                .shared
                .index
                .schema()
                .get_field_entry(e.shared.fields.text)
                .field_type()
                .clone();
            let FieldType::Str(o) = tok else { panic!() };
            let name = o.get_indexing_options().unwrap().tokenizer().to_owned();
            assert_eq!(name, if made_before { "default" } else { "whale_text" });
            e.write(vec![d.clone()]).await.unwrap();
            e.refresh().await.unwrap();
            assert_eq!(e.search(&search("disk")).await.unwrap().total, 1);
            assert_eq!(e.search(&search("磁盘")).await.unwrap().total, want_word);
            assert_eq!(
                e.search(&search("磁盘空间不足")).await.unwrap().total,
                1,
                "the whole run matches either way"
            );
        }
    }
}
