//! The embedded backend: a tantivy index in `WHALE_INDEX_DIR`, no server needed. One process owns
//! the writer (tantivy allows one per directory; the index stage takes it); any number of other
//! processes (`whale events search`, `whale trace`) open it read-only and see every commit.
//!
//! Writes go through one writer thread. It builds each document from the message the stage
//! handed over (so that work runs in the index's CPU class, not the event path's), and commits on
//! time or size (every second, or sooner once 10,000 documents wait; see docs/search.md
//! "Embedded index: commits"), not per batch: the stream is the durable record, and the index
//! keeps its own place in it. Each commit records the last
//! stream sequence it holds per subject prefix (`whale_read`), the stage reads each stream in
//! order from there ([`Backend::position`]) and acks nothing, so a crash loses only what was not
//! committed, and that is read again. After a failed commit the writer refuses the documents of
//! every input until that input has asked for its position again (which commits what waits
//! first): nothing after a gap is ever committed, so a position never skips a message.
//!
//! Nothing is doubled, and the look-up that ensures it (delete by id, then add) is paid only where
//! a copy can exist: the writer knows the highest stream sequence it has ever stored per subject
//! prefix (saved in every commit's payload, and raised by every document it adds). A message
//! above that mark cannot be stored yet, whatever its delivery count says (after a hard
//! nats-server stop a committed message can come back as a *first* delivery, but its sequence is
//! at or below the mark), so it is added without a look-up; anything else replaces its copy.

mod phrase;
mod priority;
pub(crate) mod schema;
pub mod tokenizer;
pub(crate) mod translate;

use std::collections::{HashMap, HashSet};
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

pub use self::priority::raised as floor_raised;
use self::schema::{date, Fields};
use crate::backend::{Backend, Committed, Delivered, Error, Hits, Order, Search, WriteReport};
use crate::doc::Doc;
use whale_kernel::worker::Position;
use whale_kernel::Delivery;

/// Memory the writer may use before it flushes a segment.
const WRITER_HEAP: usize = 128 * 1024 * 1024;
/// Longest a stored document waits for its commit: how stale search may be, and how long the
/// index stage holds a message before acking it.
pub(crate) const COMMIT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Most documents waiting for one commit. A commit has a fixed cost (segment files written and
/// fsynced, a new segment to merge later, readers reopened), so commits are as large as the
/// stage's loop allows: it holds at most 40 batches of 512 per input until their commit.
const COMMIT_DOCS: usize = 10_000;
/// A group of at least [`QUIET_DOCS`] documents commits once no more have come for this long: a
/// burst that ended is searchable at once, and a loop held at its limit of batches awaiting
/// their commit is released instead of idling until
/// [`COMMIT_EVERY`] (measured under `whale-bench pipeline`: the index ended each run waiting
/// for that timer with the CPU idle).
const QUIET: std::time::Duration = std::time::Duration::from_millis(50);
/// Smallest group [`QUIET`] commits: a trickle of documents waits for [`COMMIT_EVERY`] as before
/// instead of making a segment (files, fsyncs, merges later) for every few documents.
const QUIET_DOCS: usize = 1_000;
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

/// One document to add. The writer thread builds it (parses the message, makes the tantivy
/// document): that is the index's own work, so it runs in the writer's class (idle while the event
/// path is busy, [`priority`]), not on the threads that carry events to their actions.
enum Add {
    /// A message the index stage read ([`Backend::submit_messages`]).
    Message(Delivery),
    /// A document built elsewhere, with its stream sequence under its subject prefix when known.
    Doc(Box<Doc>, Option<(String, u64)>),
}

impl Add {
    /// Its stream sequence under its subject prefix ([`seq_key`]; none when unknown).
    fn seq(&self) -> Option<(&str, u64)> {
        match self {
            Add::Message(d) => (d.stream_seq > 0).then(|| (seq_key(&d.subject), d.stream_seq)),
            Add::Doc(_, seq) => seq.as_ref().map(|(k, s)| (k.as_str(), *s)),
        }
    }

    /// The document and its tantivy form. A panic while building them (a bug; no input is known
    /// to cause one) is contained here as the worker loop contains a stage's: logged, counted in
    /// `whale_panics_total{where="stage",stage="index"}`, and the message passed over (it stays
    /// in its stream), so the writer thread lives on.
    fn build(&self, fields: &Fields) -> Option<(String, TantivyDocument)> {
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match self {
            Add::Message(d) => {
                #[cfg(test)]
                assert!(&d.payload[..] != PANIC_TEST, "a test asked for it");
                let doc = Doc::of(d);
                let t = fields.to_tantivy(&doc);
                (doc.id, t)
            }
            Add::Doc(doc, _) => (doc.id.clone(), fields.to_tantivy(doc)),
        }));
        match built {
            Ok(b) => Some(b),
            Err(panic) => {
                let at = match self {
                    Add::Message(d) => format!("{} #{}", d.subject, d.stream_seq),
                    Add::Doc(d, _) => d.id.clone(),
                };
                whale_kernel::metrics::PANICS
                    .with_label_values(&["stage", "index"])
                    .inc();
                tracing::error!(
                    message = %at,
                    "panic while building its index document: {}; passed over (it stays in its stream)",
                    whale_kernel::worker::panic_message(&*panic)
                );
                None
            }
        }
    }
}

/// Tests: a message with this payload panics in [`Add::build`].
#[cfg(test)]
const PANIC_TEST: &[u8] = b"panic in the writer (test)";

/// Highest stream sequence stored, by subject prefix ([`seq_key`]): saved with each commit (its
/// payload), read when the writer opens the index.
type Marks = HashMap<String, u64>;

/// What a commit holds: the highest sequence stored per prefix (`whale_seq`, which decides the
/// look-ups), the highest read in order since this whale kept its own place (`whale_read`, where
/// reading goes on; absent in an index an earlier whale made), and whether the marks are known.
#[derive(Debug, Clone, Default)]
pub(crate) struct Place {
    stored: Marks,
    read: Marks,
    known: bool,
}

impl Place {
    /// Where the input of `prefixes` (one stream's) reads on.
    fn position(&self, prefixes: &[String]) -> Position {
        let max = |m: &Marks| {
            m.iter()
                .filter(|(k, _)| prefixes.iter().any(|p| under(k, p)))
                .map(|(_, n)| *n)
                .max()
        };
        match (max(&self.read), max(&self.stored)) {
            (Some(read), _) => Position::At(read + 1),
            // Made by a whale that acked each message: its consumer's acks say what is stored.
            (None, Some(stored)) => Position::AfterAcked {
                otherwise: stored + 1,
            },
            (None, None) if self.known => Position::At(1),
            (None, None) => Position::AfterAcked { otherwise: 1 },
        }
    }
}

enum Job {
    /// Documents to add; answered once committed.
    Write(Vec<Add>, oneshot::Sender<Result<(), String>>),
    /// Delete what was seen before the cutoff; committed at once.
    Expire(DateTime, oneshot::Sender<Result<u64, String>>),
    /// Commit now (a refresh).
    Commit(oneshot::Sender<Result<(), String>>),
    /// Where the inputs of these subject prefixes read on: commits what waits, then answers with
    /// the committed marks and takes these prefixes' documents again after a failed commit.
    Position(Vec<String>, oneshot::Sender<Result<Place, String>>),
    /// Tests: hold the writer this long, as a CPU it cannot get would; answered with the next
    /// commit.
    #[cfg(test)]
    Stall(std::time::Duration, oneshot::Sender<Result<(), String>>),
    /// Tests: the next commit fails (as a full disk would make it).
    #[cfg(test)]
    FailNextCommit,
}

/// The embedded index.
pub struct Embedded {
    shared: Arc<Shared>,
    dir: PathBuf,
    writer: Option<Mutex<mpsc::Sender<Job>>>,
    /// What the last commit before this writer opened had stored ([`Marks`]); `None` when
    /// unknown (an index written by a whale before these marks): every document then replaces.
    marks: Option<Marks>,
    /// Where the last commit before this writer opened had read to in order ([`Place`]).
    read: Marks,
    /// Documents the writer replaced by id (looked up), and added without a look-up.
    stats: Arc<WriteStats>,
    /// Jobs sent to the writer and not answered yet (the priority floor watches their age).
    waiting: Arc<priority::Waiting>,
    /// The writer thread's id (Linux; tests read its class in /proc).
    #[cfg_attr(not(test), allow(dead_code))]
    writer_tid: i32,
}

/// Counts of the writer's two paths (tests and benchmarks read them).
#[derive(Default, Debug)]
pub struct WriteStats {
    pub replaced: std::sync::atomic::AtomicU64,
    pub added: std::sync::atomic::AtomicU64,
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
        Self::open_with(dir, priority::Scheduling::standard())
    }

    fn open_with(dir: &Path, sched: priority::Scheduling) -> Result<Embedded, Error> {
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
        // The writer lives on its own thread, which lowers its CPU priority first (priority.rs):
        // tantivy's indexing, segment and merge threads are all started from it and inherit it.
        let (tx, rx) = mpsc::channel();
        let (opened_tx, opened_rx) = mpsc::sync_channel(1);
        let (state_tx, state_rx) = mpsc::sync_channel::<WriterState>(1);
        let index = e.shared.index.clone();
        std::thread::Builder::new()
            .name("whale-index-writer".into())
            .spawn(move || {
                let idle = priority::enter(&sched);
                // One indexing thread: one segment per commit (two threads made two, and ran
                // slower).
                let writer: IndexWriter = match index.writer_with_num_threads(1, WRITER_HEAP) {
                    Ok(w) => w,
                    Err(err) => {
                        let _ = opened_tx.send(Err(err));
                        return;
                    }
                };
                writer.set_merge_policy(Box::new(merge_policy()));
                let _ = opened_tx.send(Ok((idle, priority::tid())));
                if let Ok(state) = state_rx.recv() {
                    writer_loop(writer, state, rx);
                }
            })
            .map_err(|err| Error::Other(format!("cannot start the index writer thread: {err}")))?;
        let idle = match opened_rx.recv() {
            Ok(Ok((idle, tid))) => {
                e.writer_tid = tid;
                idle
            }
            Ok(Err(tantivy::TantivyError::LockFailure(..))) => {
                return Err(Error::Invalid(format!(
                    "another process is writing the index in {} (only one `whale run` with the index stage \
                     may use one WHALE_INDEX_DIR; searching needs no writer)",
                    dir.display()
                )))
            }
            Ok(Err(other)) => return Err(Error::Other(other.to_string())),
            Err(_) => return Err(Error::Other("the index writer thread ended at start".into())),
        };
        let payload = e
            .shared
            .index
            .load_metas()
            .map_err(|err| Error::Other(err.to_string()))?
            .payload;
        let stored = e.shared.reader.searcher().num_docs();
        e.read = payload
            .as_deref()
            .map(|p| read_marks(p, "whale_read"))
            .unwrap_or_default();
        e.marks = match payload.as_deref().map(|p| read_marks(p, "whale_seq")) {
            Some(m) => Some(m),
            None if stored == 0 => Some(Marks::new()),
            None => {
                tracing::info!(
                    "the embedded index has no stored sequence marks (made by an earlier whale): \
                     every document replaces its earlier copy until the next start"
                );
                None
            }
        };
        let state = WriterState {
            reader: e.shared.reader.clone(),
            fields: e.shared.fields.clone(),
            marks: e.marks.clone(),
            read: e.read.clone(),
            stats: e.stats.clone(),
            waiting: e.waiting.clone(),
        };
        state_tx
            .send(state)
            .map_err(|_| Error::Other("the index writer thread ended at start".into()))?;
        e.writer = Some(Mutex::new(tx));
        if idle {
            priority::watch(sched, Arc::downgrade(&e.waiting));
        }
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
            marks: None,
            read: Marks::new(),
            stats: Arc::default(),
            waiting: Arc::default(),
            writer_tid: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many documents were replaced by id and how many added without a look-up so far.
    pub fn stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.stats.replaced.load(Relaxed),
            self.stats.added.load(Relaxed),
        )
    }

    /// Hands `batch` to the writer thread, which builds and adds the documents; resolves once
    /// they are committed.
    fn to_writer(&self, batch: Vec<Add>) -> Result<(WriteReport, Committed), Error> {
        if batch.is_empty() {
            return Ok((WriteReport::default(), Box::pin(async { Ok(()) })));
        }
        let (tx, rx) = oneshot::channel();
        self.send(Job::Write(batch, tx))?;
        Ok((WriteReport::default(), committed(rx)))
    }

    fn send(&self, job: Job) -> Result<(), Error> {
        let w = self
            .writer
            .as_ref()
            .ok_or_else(|| Error::Invalid("this index was opened read-only".into()))?;
        let tx = w
            .lock()
            .map_err(|_| Error::Other("index writer lock poisoned".into()))?;
        self.waiting.sent();
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
            match schema::read_stored(text) {
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

/// What the writer thread starts with.
struct WriterState {
    reader: IndexReader,
    fields: Arc<Fields>,
    /// The marks of the last commit (`None`: unknown, every document replaces).
    marks: Option<Marks>,
    /// The read positions of the last commit.
    read: Marks,
    stats: Arc<WriteStats>,
    waiting: Arc<priority::Waiting>,
}

/// The writer thread: adds documents as they come and commits when the oldest uncommitted one has
/// waited [`COMMIT_EVERY`], when [`COMMIT_DOCS`] wait, when [`QUIET_DOCS`] or more wait and none
/// came for [`QUIET`], on retention, or on a refresh; then answers every job the commit covered.
///
/// Whether a document needs the look-up is decided here, where documents arrive one after the
/// other: `stored` is the highest sequence per prefix of everything committed before this writer
/// opened and everything added since (committed or not). A document above it cannot have a copy
/// (each stream sequence is one message, and every copy of a message carries its sequence); one
/// at or below it may (a redelivery, a committed message delivered again after a nats-server
/// restart, a batch overtaken by a later one in flight) and replaces by id. Each commit's payload
/// is `stored` at that moment: at least the sequence of every document the index holds.
fn writer_loop(mut w: IndexWriter, st: WriterState, rx: mpsc::Receiver<Job>) {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Instant;
    let WriterState {
        reader,
        fields,
        marks,
        mut read,
        stats,
        waiting: answered,
    } = st;
    let id_field = fields.keyword("id").expect("id field");
    let known = marks.is_some();
    let mut stored = marks.unwrap_or_default();
    // What the last commit holds; after a failed one, the prefixes whose input has asked for its
    // position since (the documents of every other prefix are refused).
    let mut committed = Place {
        stored: stored.clone(),
        read: read.clone(),
        known,
    };
    let mut closed: Option<HashSet<String>> = None;
    let mut waiting: Vec<Reply> = Vec::new();
    let mut docs = 0usize;
    let mut since: Option<Instant> = None;
    let mut failed: Option<String> = None;
    loop {
        let job = match since {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(t) => {
                let due = (t + COMMIT_EVERY).saturating_duration_since(Instant::now());
                let wait = match docs >= QUIET_DOCS {
                    true => due.min(QUIET),
                    false => due,
                };
                rx.recv_timeout(wait)
            }
        };
        let (commit_now, stop) = match job {
            Ok(Job::Write(batch, reply))
                if closed.as_ref().is_some_and(|open| {
                    batch.iter().any(|a| {
                        a.seq()
                            .is_some_and(|(k, _)| !open.iter().any(|p| under(k, p)))
                    })
                }) =>
            {
                answered.answered();
                let _ = reply.send(Err(
                    "an earlier commit failed: this input reads again from the last commit".into(),
                ));
                (false, false)
            }
            Ok(Job::Write(batch, reply)) => {
                docs += batch.len();
                since.get_or_insert_with(Instant::now);
                let (mut replaced, mut added) = (0u64, 0u64);
                for add in batch {
                    let fresh = match add.seq() {
                        Some((key, s)) => {
                            raise(&mut read, key, s);
                            match stored.get_mut(key) {
                                Some(m) if s <= *m => false,
                                Some(m) => {
                                    *m = s;
                                    known
                                }
                                None => {
                                    stored.insert(key.to_owned(), s);
                                    known
                                }
                            }
                        }
                        None => false,
                    };
                    if failed.is_some() {
                        continue;
                    }
                    let Some((id, doc)) = add.build(&fields) else {
                        continue;
                    };
                    if fresh {
                        added += 1;
                    } else {
                        replaced += 1;
                        w.delete_term(Term::from_field_text(id_field, &id));
                    }
                    if let Err(e) = w.add_document(doc) {
                        failed = Some(e.to_string());
                    }
                }
                stats.replaced.fetch_add(replaced, Relaxed);
                stats.added.fetch_add(added, Relaxed);
                waiting.push(Reply::Write(reply));
                (docs >= COMMIT_DOCS, false)
            }
            Ok(Job::Expire(cutoff, reply)) => {
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
                waiting.push(Reply::Expire(reply, n));
                (true, false)
            }
            Ok(Job::Commit(reply)) => {
                waiting.push(Reply::Write(reply));
                (true, false)
            }
            Ok(Job::Position(prefixes, reply)) => {
                waiting.push(Reply::Position(prefixes, reply));
                (true, false)
            }
            #[cfg(test)]
            Ok(Job::FailNextCommit) => {
                answered.answered();
                failed = Some("no space left on device (test)".into());
                (false, false)
            }
            #[cfg(test)]
            Ok(Job::Stall(d, reply)) => {
                std::thread::sleep(d);
                waiting.push(Reply::Write(reply));
                (false, false)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => (true, false),
            Err(mpsc::RecvTimeoutError::Disconnected) => (true, true),
        };
        if commit_now && !waiting.is_empty() {
            let result = match failed.take() {
                None => commit(&mut w, &stored, &read),
                Some(e) => Err(e),
            };
            tracing::debug!(
                documents = docs,
                jobs = waiting.len(),
                ok = result.is_ok(),
                "embedded index commit"
            );
            match &result {
                Ok(()) => {
                    committed.stored.clone_from(&stored);
                    committed.read.clone_from(&read);
                }
                Err(e) => {
                    // Back to what the last commit holds; every input reads again from there.
                    tracing::error!("embedded index commit failed: {e}");
                    let _ = w.rollback();
                    stored.clone_from(&committed.stored);
                    read.clone_from(&committed.read);
                    closed = Some(HashSet::new());
                }
            }
            if let Err(e) = reader.reload() {
                tracing::warn!("embedded index reader reload failed: {e}");
            }
            for reply in waiting.drain(..) {
                answered.answered();
                match reply {
                    Reply::Write(r) => {
                        let _ = r.send(result.clone());
                    }
                    Reply::Expire(r, n) => {
                        let _ = r.send(result.clone().map(|_| n));
                    }
                    Reply::Position(prefixes, r) => {
                        if result.is_ok() {
                            if let Some(open) = closed.as_mut() {
                                open.extend(prefixes);
                            }
                        }
                        let _ = r.send(result.clone().map(|_| committed.clone()));
                    }
                }
            }
            docs = 0;
            since = None;
        }
        if stop {
            break;
        }
    }
    // The stage is gone: let merges finish so the directory is tidy.
    let _ = w.wait_merging_threads();
}

/// Raises the mark of `key` to `s` (a new key starts there), without copying the key when it is
/// known: this runs once per document.
fn raise(marks: &mut Marks, key: &str, s: u64) {
    match marks.get_mut(key) {
        Some(m) => *m = (*m).max(s),
        None => {
            marks.insert(key.to_owned(), s);
        }
    }
}

enum Reply {
    Write(oneshot::Sender<Result<(), String>>),
    Expire(oneshot::Sender<Result<u64, String>>, u64),
    Position(Vec<String>, oneshot::Sender<Result<Place, String>>),
}

/// Commits with the sequence marks and read positions as the commit's payload.
fn commit(w: &mut IndexWriter, marks: &Marks, read: &Marks) -> Result<(), String> {
    let payload = serde_json::json!({ "whale_seq": marks, "whale_read": read }).to_string();
    let mut prepared = w.prepare_commit().map_err(|e| e.to_string())?;
    prepared.set_payload(&payload);
    prepared.commit().map(|_| ()).map_err(|e| e.to_string())
}

/// The marks under `key` of a commit payload (`whale_seq` stored, `whale_read` read in order;
/// none if it has none).
fn read_marks(payload: &str, key: &str) -> Marks {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| serde_json::from_value(v[key].clone()).ok())
        .unwrap_or_default()
}

/// Whether the marks under `key` ([`seq_key`] of a subject) belong to the input of subject
/// prefix `prefix` (its filter without `.>`).
fn under(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The stream sequences of one subject prefix (`whale.events`, `whale.pipe`, ...) grow with
/// every message stored under it.
fn seq_key(subject: &str) -> &str {
    match subject.match_indices('.').nth(1) {
        Some((at, _)) => &subject[..at],
        None => subject,
    }
}

#[async_trait]
impl Backend for Embedded {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn write(&self, docs: Vec<Doc>) -> Result<WriteReport, Error> {
        let (report, committed) = self.submit(docs, Vec::new()).await?;
        committed.await?;
        Ok(report)
    }

    /// A document whose message is above every sequence stored under its subject prefix is
    /// added without a look-up; any other replaces its earlier copy by id (see [`writer_loop`]).
    async fn submit(
        &self,
        docs: Vec<Doc>,
        from: Vec<Delivered>,
    ) -> Result<(WriteReport, Committed), Error> {
        let batch = docs
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let seq = from
                    .get(i)
                    .filter(|f| f.stream_seq > 0)
                    .map(|f| (seq_key(&d.subject).to_owned(), f.stream_seq));
                Add::Doc(Box::new(d), seq)
            })
            .collect();
        self.to_writer(batch)
    }

    async fn submit_messages(&self, batch: &[Delivery]) -> Result<(WriteReport, Committed), Error> {
        self.to_writer(batch.iter().cloned().map(Add::Message).collect())
    }

    async fn search(&self, s: &Search) -> Result<Hits, Error> {
        let (shared, s) = (self.shared.clone(), s.clone());
        tokio::task::spawn_blocking(move || shared.search(&s))
            .await
            .map_err(|e| Error::Other(e.to_string()))?
    }

    fn keeps_position(&self) -> bool {
        self.writer.is_some()
    }

    async fn position(&self, prefixes: &[String]) -> Result<Position, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Position(prefixes.to_vec(), tx))?;
        match rx.await {
            Ok(Ok(place)) => Ok(place.position(prefixes)),
            Ok(Err(e)) => Err(Error::Unavailable(format!(
                "embedded index commit failed: {e}"
            ))),
            Err(_) => Err(Error::Unavailable("the index writer thread stopped".into())),
        }
    }

    /// Commits what waits (a writer) and reopens the reader.
    async fn refresh(&self) -> Result<(), Error> {
        if self.writer.is_some() {
            let (tx, rx) = oneshot::channel();
            self.send(Job::Commit(tx))?;
            committed(rx).await?;
        }
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

/// The answer of the writer thread to one job, as a [`Committed`].
fn committed(rx: oneshot::Receiver<Result<(), String>>) -> Committed {
    Box::pin(async move {
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Unavailable(format!(
                "embedded index commit failed: {e}"
            ))),
            Err(_) => Err(Error::Unavailable("the index writer thread stopped".into())),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parse;
    use tantivy::schema::{FieldEntry, FieldType, TEXT};

    /// (scheduling policy, nice) of thread `tid` of this process, from /proc (fields 41, 19).
    fn class_of(tid: i32) -> (u32, i32) {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        // f[0] is field 3 (state).
        (f[41 - 3].parse().unwrap(), f[19 - 3].parse().unwrap())
    }

    async fn eventually_class(tid: i32, want: (u32, i32), within: std::time::Duration) {
        let until = std::time::Instant::now() + within;
        while class_of(tid) != want && std::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(class_of(tid), want, "thread {tid}");
    }

    /// The writer runs in the idle class (policy 5) at nice 10 when this process may leave that
    /// class again, else in the normal class (0) at nice 10. In the idle class the floor takes it
    /// out while a job has waited too long (the writer held as a starved CPU would hold it), and
    /// puts it back once the writer caught up; the held job's documents are committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_runs_idle_and_the_floor_raises_it_while_a_job_waits_too_long() {
        use std::time::Duration;
        let standard = priority::Scheduling::standard();
        assert_eq!(
            standard.idle,
            whale_kernel::testkit::may_leave_idle_class(),
            "the probe agrees with /proc"
        );
        let dir = tempfile::tempdir().unwrap();
        let sched = priority::Scheduling {
            raise_after: Duration::from_millis(400),
            lower_below: Duration::from_millis(300),
            ..standard
        };
        let e = Embedded::open_with(dir.path(), sched).unwrap();
        let tid = e.writer_tid;
        if !sched.idle {
            eventually_class(tid, (0, 10), Duration::from_secs(5)).await;
            return;
        }
        eventually_class(tid, (5, 10), Duration::from_secs(5)).await;
        // A thread outside the index at nice 10 (as every thread of a whale started with
        // `nice -n 10`) stays in the normal class through the raise and the lower.
        let (bystander_tx, bystander) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let bystander_thread = std::thread::spawn(move || {
            rustix::process::setpriority_process(None, 10).unwrap();
            bystander_tx.send(priority::tid()).unwrap();
            let _ = stopped.recv();
        });
        let bystander = bystander.recv().unwrap();
        assert_eq!(class_of(bystander), (0, 10));
        let raised = floor_raised();
        let (held_tx, held) = oneshot::channel();
        e.send(Job::Stall(Duration::from_millis(2_000), held_tx))
            .unwrap();
        let ev = serde_json::json!({"id": "f1", "event_type": "app.log", "source": "t",
            "detail": {"message": "held"}});
        let d = Doc::from_delivery(&whale_kernel::Delivery::new(
            "whale.events.app.log",
            serde_json::to_vec(&ev).unwrap(),
            &[],
            1,
            1,
            OffsetDateTime::now_utc(),
        ));
        let (_, written) = e.submit(vec![d], vec![]).await.unwrap();
        eventually_class(tid, (0, 10), Duration::from_millis(1_500)).await;
        assert!(floor_raised() > raised, "the floor counted the raise");
        committed(held).await.unwrap();
        written.await.unwrap();
        eventually_class(tid, (5, 10), Duration::from_secs(10)).await;
        assert_eq!(
            class_of(bystander),
            (0, 10),
            "a thread the floor never raised"
        );
        stop.send(()).unwrap();
        bystander_thread.join().unwrap();
        e.refresh().await.unwrap();
        let hits = e
            .search(&Search::new(parse("held").unwrap()))
            .await
            .unwrap();
        assert_eq!(hits.total, 1);
    }

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
        let d = Doc::from_delivery(&whale_kernel::Delivery::new(
            "whale.events.app.log",
            serde_json::to_vec(&ev).unwrap(),
            &[("Nats-Msg-Id", "e1")],
            1,
            1,
            OffsetDateTime::now_utc(),
        ));
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

    /// An index whose `doc` field holds whole documents (as whale stored them before `record` was
    /// stored once) still opens and answers with the same documents, beside documents stored now.
    #[tokio::test]
    async fn documents_stored_whole_by_an_earlier_whale_still_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let old = [record(1, false), record(2, true)];
        {
            let index = Index::create_in_dir(dir.path(), Fields::schema()).unwrap();
            index
                .tokenizers()
                .register(tokenizer::NAME, tokenizer::analyzer());
            let fields = Fields::new(index.schema()).unwrap();
            let mut w: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
            for d in &old {
                let whole = serde_json::to_string(d).unwrap();
                w.add_document(fields.tantivy_doc(d, whole)).unwrap();
            }
            w.commit().unwrap();
        }
        let all = || {
            let mut s = Search::new(parse("*").unwrap());
            s.kinds = vec![];
            s
        };
        let found = |mut hits: Vec<Doc>| {
            hits.sort_by(|a, b| a.id.cmp(&b.id));
            hits
        };
        let e = Embedded::open(dir.path()).unwrap();
        assert_eq!(found(e.search(&all()).await.unwrap().hits), old.to_vec());
        let new = [record(3, false), record(4, true)];
        e.write(new.to_vec()).await.unwrap();
        e.refresh().await.unwrap();
        let mut want = old.to_vec();
        want.extend(new);
        assert_eq!(found(e.search(&all()).await.unwrap().hits), found(want));
        let ev3 = Search::new(parse("event_id:ev-3 AND detail.n:3").unwrap());
        assert_eq!(e.search(&ev3).await.unwrap().total, 1);
    }

    /// An event (`whale.events.*`) or a rejection (`whale.rejected.*`): both live on one
    /// stream, so their sequences interleave.
    fn record(i: u64, rejected: bool) -> Doc {
        Doc::from_delivery(&message(i, rejected, 1))
    }

    /// The message of [`record`], delivered for the `attempt`th time.
    fn message(i: u64, rejected: bool, attempt: i64) -> whale_kernel::Delivery {
        let ev = serde_json::json!({"id": format!("ev-{i}"), "event_type": "app.log", "source": "t",
            "time": "2026-11-28T01:00:00Z", "detail": {"n": i}});
        let (subject, payload) = if rejected {
            let r = serde_json::json!({"id": format!("ev-{i}"), "reason": "schema",
                "received": "2026-11-28T01:00:00Z", "event": ev});
            ("whale.rejected.app.log", r)
        } else {
            ("whale.events.app.log", ev)
        };
        whale_kernel::Delivery::new(
            subject,
            serde_json::to_vec(&payload).unwrap(),
            &[("Nats-Msg-Id", &format!("ev-{i}"))],
            attempt,
            i,
            OffsetDateTime::now_utc(),
        )
    }

    /// Odd sequences are rejections, even ones events; handed over as the index stage does.
    async fn hand_over(e: &Embedded, seqs: std::ops::Range<u64>, attempt: i64) -> Committed {
        let batch: Vec<_> = seqs.map(|i| message(i, i % 2 == 1, attempt)).collect();
        e.submit_messages(&batch).await.unwrap().1
    }

    async fn submit(e: &Embedded, seqs: std::ops::Range<u64>, attempt: i64) {
        hand_over(e, seqs, attempt).await.await.unwrap();
    }

    /// The writer of a dropped `Embedded` lets go of the directory's lock shortly after.
    fn reopen(dir: &Path) -> Embedded {
        for _ in 0..100 {
            match Embedded::open(dir) {
                Ok(e) => return e,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
        Embedded::open(dir).unwrap()
    }

    async fn count(e: &Embedded) -> u64 {
        e.refresh().await.unwrap();
        e.shared
            .search(&Search::new(parse("*").unwrap()))
            .unwrap()
            .total
    }

    /// The index stage hands its messages over as they came; the writer builds their documents
    /// (one that is not JSON as `unparsed`, counted), and their sequences move the position.
    #[tokio::test]
    async fn messages_handed_over_become_documents_in_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let e = Embedded::open(dir.path()).unwrap();
        let unparsed = || {
            whale_kernel::metrics::STAGE_EVENTS
                .with_label_values(&["index", "unparsed"])
                .get()
        };
        let before = unparsed();
        let mut garbage = message(3, false, 1);
        garbage.payload = bytes::Bytes::from_static(b"\xff not json");
        let batch = vec![message(1, false, 1), message(2, true, 1), garbage];
        let (report, committed) = e.submit_messages(&batch).await.unwrap();
        assert!(report.retry.is_empty() && report.dropped.is_empty());
        committed.await.unwrap();
        e.refresh().await.unwrap();
        let total = |q: &str| {
            e.shared
                .search(&Search::new(parse(q).unwrap()))
                .unwrap()
                .total
        };
        assert_eq!(total("kind:event AND event_id:ev-1 AND detail.n:1"), 1);
        assert_eq!(total("kind:rejected AND event_id:ev-2"), 1);
        assert_eq!(total("kind:unparsed AND json"), 1);
        assert_eq!(
            unparsed() - before,
            1,
            "the unparsed message was counted once"
        );
        let events = vec!["whale.events".to_owned()];
        assert_eq!(e.position(&events).await.unwrap(), Position::At(4));
    }

    /// A panic while the writer builds a document passes that message over, counted; the
    /// writer lives on and the batch's other documents are stored.
    #[tokio::test]
    async fn a_panic_while_building_a_document_passes_it_over_and_the_writer_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let e = Embedded::open(dir.path()).unwrap();
        let panics = || {
            whale_kernel::metrics::PANICS
                .with_label_values(&["stage", "index"])
                .get()
        };
        let before = panics();
        let mut bad = message(2, false, 1);
        bad.payload = bytes::Bytes::from_static(PANIC_TEST);
        let batch = vec![message(1, false, 1), bad, message(3, false, 1)];
        e.submit_messages(&batch).await.unwrap().1.await.unwrap();
        assert_eq!(count(&e).await, 2);
        assert_eq!(panics() - before, 1);
        submit(&e, 4..6, 1).await;
        assert_eq!(count(&e).await, 4, "the writer still adds documents");
        let stream = vec!["whale.events".to_owned(), "whale.rejected".to_owned()];
        assert_eq!(e.position(&stream).await.unwrap(), Position::At(6));
    }

    /// Every message is stored once, counted exactly, across restarts, redeliveries, committed
    /// messages delivered again as first deliveries (a hard nats-server stop; with and without a
    /// restart of the writer), a reset consumer, and batches in flight overtaking each other; with
    /// events and rejections interleaved on one stream. Only messages above everything stored
    /// skip the look-up (the counts of both paths are checked, so the fast path is proven taken).
    #[tokio::test]
    async fn documents_are_never_doubled_across_restarts_and_redeliveries() {
        let dir = tempfile::tempdir().unwrap();
        let e = Embedded::open(dir.path()).unwrap();
        submit(&e, 1..101, 1).await;
        assert_eq!(e.stats(), (0, 100), "a new index: no look-ups");
        // Stored, then the worker died before its ack: delivered again.
        submit(&e, 51..101, 2).await;
        // Committed and acked, but the server forgot the acks: first deliveries again.
        submit(&e, 81..111, 1).await;
        assert_eq!(count(&e).await, 110);
        assert_eq!(e.stats(), (50 + 20, 100 + 10));
        // Batches in flight: a later one reaches the writer first.
        let later = hand_over(&e, 200..300, 1).await;
        let earlier = hand_over(&e, 111..200, 1).await;
        let (a, b) = futures::join!(later, earlier);
        a.unwrap();
        b.unwrap();
        assert_eq!(count(&e).await, 299);
        drop(e);

        let e = reopen(dir.path());
        assert_eq!(e.marks.as_ref().unwrap()["whale.events"], 298);
        assert_eq!(e.marks.as_ref().unwrap()["whale.rejected"], 299);
        // A consumer reset: everything delivered again, as first deliveries.
        submit(&e, 1..351, 1).await;
        assert_eq!(count(&e).await, 350);
        assert_eq!(e.stats(), (299, 51));
        drop(e);

        let e = reopen(dir.path());
        assert_eq!(e.marks.as_ref().unwrap()["whale.events"], 350);
        submit(&e, 340..360, 2).await;
        submit(&e, 360..370, 1).await;
        assert_eq!(count(&e).await, 369);
        assert_eq!(e.stats(), (11, 19));
    }

    /// Where an input reads on: after the highest sequence read in order under its stream's
    /// prefixes; an index of an earlier whale (stored marks, no read positions) goes by its
    /// consumer's acks; a new index reads the whole stream.
    #[test]
    fn the_position_is_after_what_was_read_in_order() {
        let marks =
            |v: &[(&str, u64)]| -> Marks { v.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect() };
        let events = ["whale.events".to_owned(), "whale.rejected".to_owned()];
        let place = Place {
            stored: marks(&[
                ("whale.events", 90),
                ("whale.rejected", 95),
                ("whale.pipe", 7),
            ]),
            read: marks(&[
                ("whale.events", 90),
                ("whale.rejected", 95),
                ("whale.pipe", 7),
            ]),
            known: true,
        };
        assert_eq!(place.position(&events), Position::At(96));
        assert_eq!(place.position(&["whale.pipe".into()]), Position::At(8));
        assert_eq!(place.position(&["whale.audit".into()]), Position::At(1));
        let earlier = Place {
            read: Marks::new(),
            ..place.clone()
        };
        assert_eq!(
            earlier.position(&events),
            Position::AfterAcked { otherwise: 96 }
        );
        let unknown = Place {
            stored: Marks::new(),
            read: Marks::new(),
            known: false,
        };
        assert_eq!(
            unknown.position(&events),
            Position::AfterAcked { otherwise: 1 }
        );
    }

    /// After a failed commit the writer refuses every input's documents until that input asked
    /// for its position again, which is after the last good commit: the documents of the failed
    /// commit and those refused are read again from there, each stored once, and nothing after
    /// the gap was committed in between (a crash then would have skipped it). The positions
    /// survive a restart.
    #[tokio::test]
    async fn a_failed_commit_makes_every_input_read_again_from_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = Embedded::open(dir.path()).unwrap();
        let events = vec!["whale.events".to_owned(), "whale.rejected".to_owned()];
        assert_eq!(e.position(&events).await.unwrap(), Position::At(1));
        submit(&e, 1..101, 1).await;
        e.send(Job::FailNextCommit).unwrap();
        let failed = hand_over(&e, 101..151, 1).await;
        assert!(failed.await.is_err(), "the commit failed");
        // Read before the input heard of it: refused, and no later commit holds it.
        let refused = hand_over(&e, 151..201, 1).await;
        assert!(refused.await.is_err());
        e.refresh().await.unwrap();
        assert_eq!(count(&e).await, 100);
        // Another input (the pipe) is refused too until it asks.
        let pipe = vec!["whale.pipe".to_owned()];
        let (docs, from): (Vec<Doc>, Vec<Delivered>) = (1..11)
            .map(|i| {
                let mut d = record(i, false);
                d.subject = "whale.pipe.matched".into();
                d.id = format!("pipe-{i}");
                (
                    d,
                    Delivered {
                        attempt: 1,
                        stream_seq: i,
                    },
                )
            })
            .unzip();
        let (_, c) = e.submit(docs.clone(), from.clone()).await.unwrap();
        assert!(c.await.is_err());
        assert_eq!(e.position(&events).await.unwrap(), Position::At(101));
        submit(&e, 101..201, 1).await;
        assert_eq!(count(&e).await, 200);
        assert_eq!(e.position(&pipe).await.unwrap(), Position::At(1));
        let (_, c) = e.submit(docs, from).await.unwrap();
        c.await.unwrap();
        assert_eq!(count(&e).await, 210);
        assert_eq!(
            e.stats().1,
            210,
            "every document added once, no look-up needed"
        );
        drop(e);
        let e = reopen(dir.path());
        assert_eq!(e.position(&events).await.unwrap(), Position::At(201));
        assert_eq!(e.position(&pipe).await.unwrap(), Position::At(11));
    }
}
