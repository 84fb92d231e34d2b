//! Where rule sets live: the `whale_rules` KV bucket. A set of any size is stored as
//! content-addressed chunks (`chunk.<sha256>`, each well under NATS's 1 MiB default message
//! limit) and a small manifest naming them; the key `active` holds the manifest of the active
//! set, so applying (or rolling back) is one small put, atomic whatever the set's size. Match and
//! render workers watch `active` ([`live`]), read its chunks, compile the set themselves and
//! keep the last good one.
//!
//! Every applied version keeps its manifest under `v.<version>` for ever (match records name
//! their version, and `whale trace` explains "why not" with it), and every apply or rollback
//! adds a history entry `applied.<time>` (who, when, git commit and author). Sets stored by
//! older whale versions in one value (`{version, applied_at, sources}` under `active` and
//! `v.<version>`) still load: a manifest with `sources` inline is that form.

use std::path::Path;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use whale_kernel::kv::{Bucket, KvError, Live, Ttl};
use whale_kernel::{subjects, Nats};
use whale_rules::{ParsedFile, RuleSet, RuleSource};

/// The key of the active set's manifest.
pub const ACTIVE: &str = "active";
/// Prefix of the chunk keys (`chunk.<sha256 of the chunk>`).
pub const CHUNK_PREFIX: &str = "chunk.";
/// Prefix of the history keys (`applied.<nanoseconds since 1970, 20 digits>`).
pub const HISTORY_PREFIX: &str = "applied.";

/// The key under which one version's manifest is kept.
pub fn version_key(version: &str) -> String {
    format!("v.{version}")
}

/// Largest chunk, whatever the server allows (a chunk and its headers must fit in one message).
const MAX_CHUNK: usize = 512 << 10;
/// Chunks written or read at once.
const IN_FLIGHT: usize = 16;

/// A rule set's files, loaded.
#[derive(Debug, Clone)]
pub struct Stored {
    pub version: String,
    pub sources: Vec<RuleSource>,
    /// Every file's rules as parsed when the set was applied ([`ParsedFile`]), when the store
    /// has them for every file (sets applied by older whale versions have the text only).
    pub parsed: Option<Vec<ParsedFile>>,
}

/// One file in the stored content: its text and, since the parsed forms are kept, its rules
/// as parsed (readers that do not know `parsed` ignore it and read the text).
#[derive(Deserialize)]
struct StoredFile {
    path: String,
    text: String,
    #[serde(default)]
    parsed: Option<ParsedFile>,
}

/// What the chunks of `set` hold: a JSON list of its files, `{path, text, parsed}` each, the
/// parsed form written as the set produced it (the same bytes a reader's
/// [`RuleSet::compile_parsed`] reads).
pub fn content(set: &RuleSet) -> anyhow::Result<Vec<u8>> {
    let parsed = set.parsed_json();
    let size = set
        .sources()
        .iter()
        .map(|s| s.text.len() + s.path.len())
        .sum::<usize>()
        + parsed.map_or(0, |p| p.iter().map(String::len).sum());
    let mut out = Vec::with_capacity(size + size / 8 + 64);
    out.push(b'[');
    for (i, s) in set.sources().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"path\":");
        serde_json::to_writer(&mut out, &s.path)?;
        out.extend_from_slice(b",\"text\":");
        serde_json::to_writer(&mut out, &s.text)?;
        if let Some(p) = parsed.and_then(|p| p.get(i)) {
            out.extend_from_slice(b",\"parsed\":");
            out.extend_from_slice(p.as_bytes());
        }
        out.push(b'}');
    }
    out.push(b']');
    Ok(out)
}

/// Who applied a version and from where: the principal as the audit trail records it, and
/// the git commit of the directory when it was a git checkout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The principal (an API token's name, or the CLI user), as in the audit record's `who`.
    pub by: Option<String>,
    /// `cli` or `http`.
    pub via: Option<String>,
    /// The directory applied (CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<Git>,
}

/// The git commit a directory was applied from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Git {
    pub commit: String,
    /// `Name <email>` of the commit's author.
    pub author: String,
    /// The commit's first line.
    pub subject: String,
    /// The directory had changes not committed when it was applied.
    pub dirty: bool,
}

/// A manifest: what `active`, `v.<version>` and `applied.<time>` hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub version: String,
    pub applied_at: String,
    /// `apply` or `rollback` (absent in the old form: an apply).
    #[serde(default = "apply_action")]
    pub action: String,
    #[serde(default)]
    pub rules: Option<usize>,
    #[serde(default)]
    pub files: Option<usize>,
    /// Bytes of the set's content (the chunks together).
    #[serde(default)]
    pub bytes: Option<usize>,
    /// The chunks, in order (sha256 hex of each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
    /// The version active before this one.
    #[serde(default)]
    pub previous: Option<String>,
    #[serde(flatten)]
    pub provenance: Provenance,
    /// The old single-value form: the files inline (never written any more).
    #[serde(default, skip_serializing)]
    pub sources: Option<Vec<RuleSource>>,
}

fn apply_action() -> String {
    "apply".into()
}

impl Entry {
    /// Parses a manifest, or a set stored in the old single-value form.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Entry> {
        let mut e: Entry = serde_json::from_slice(bytes)
            .map_err(|e| anyhow::anyhow!("a rule-set manifest that cannot be read: {e}"))?;
        if let Some(s) = &e.sources {
            e.files.get_or_insert(s.len());
        }
        Ok(e)
    }
}

async fn bucket(nats: &Nats) -> anyhow::Result<Bucket> {
    Bucket::open(nats, subjects::KV_RULES).await
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Gear table of the chunker: 256 fixed pseudo-random words (splitmix64), so the same content
/// is cut at the same places by every whale.
const GEAR: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
};

/// Cuts `data` into chunks of at most `max` bytes at places chosen by the content (a gear
/// rolling hash, as backup tools do): an edit to one file changes the chunks around it only,
/// so a new version of a large set stores a few new chunks, not the whole set again.
pub fn chunk_bounds(data: &[u8], max: usize) -> Vec<std::ops::Range<usize>> {
    let max = max.max(64);
    let min = max / 4;
    // an average chunk of about min + 2^bits ≈ max / 2
    let bits = (min.max(2).ilog2()).min(40);
    let mask = (1u64 << bits) - 1;
    let mut out = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let end = (start + max).min(data.len());
        let mut cut = end;
        if end - start > min {
            let mut h = 0u64;
            for (i, b) in data[start..end].iter().enumerate() {
                h = (h << 1).wrapping_add(GEAR[*b as usize]);
                if i >= min && h & mask == 0 {
                    cut = start + i + 1;
                    break;
                }
            }
        }
        out.push(start..cut);
        start = cut;
    }
    out
}

/// The chunk size for this server: at most [`MAX_CHUNK`], at most half its `max_payload`.
pub fn chunk_size(b: &Bucket) -> usize {
    (b.max_payload() / 2).clamp(1024, MAX_CHUNK)
}

/// Writes `content` as chunks (those already stored are left alone); returns their hashes.
async fn write_chunks(b: &Bucket, content: &[u8]) -> anyhow::Result<Vec<String>> {
    let parts: Vec<(String, Bytes)> = chunk_bounds(content, chunk_size(b))
        .into_iter()
        .map(|r| {
            let part = Bytes::copy_from_slice(&content[r]);
            (sha256_hex(&part), part)
        })
        .collect();
    let hashes = parts.iter().map(|(h, _)| h.clone()).collect();
    futures::stream::iter(parts)
        .map(|(hash, part)| async move {
            match b
                .create(&format!("{CHUNK_PREFIX}{hash}"), part, Ttl::Bucket)
                .await
            {
                Ok(_) | Err(KvError::Conflict) => Ok(()),
                Err(e) => Err(anyhow::Error::new(e).context("cannot store a rule-set chunk")),
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(hashes)
}

/// Reads the files of `entry`: inline (old form) or from its chunks, each checked against
/// its hash.
pub async fn load(b: &Bucket, entry: Entry) -> anyhow::Result<Stored> {
    let (sources, parsed) = match entry.sources {
        Some(s) => (s, None),
        None => {
            // owned per chunk: a stream of futures borrowing from here is not `Send` for axum
            let parts: Vec<Bytes> = futures::stream::iter(entry.chunks.clone())
                .map(|hash| {
                    let (b, version) = (b.clone(), entry.version.clone());
                    async move {
                        let part =
                            b.get(&format!("{CHUNK_PREFIX}{hash}"))
                                .await?
                                .ok_or_else(|| {
                                    anyhow::anyhow!(
                            "rule set {version}: chunk {hash} is missing from the bucket {}",
                            subjects::KV_RULES
                        )
                                })?;
                        anyhow::ensure!(
                            sha256_hex(&part) == hash,
                            "rule set {version}: chunk {hash} does not hold what its name says"
                        );
                        Ok::<_, anyhow::Error>(part)
                    }
                })
                .buffered(IN_FLIGHT)
                .try_collect()
                .await?;
            let content = parts.concat();
            drop(parts);
            let files: Vec<StoredFile> = serde_json::from_slice(&content).map_err(|e| {
                anyhow::anyhow!("rule set {}: its files cannot be read: {e}", entry.version)
            })?;
            // a worker's peak memory: the bytes go before the set is compiled
            drop(content);
            let mut sources = Vec::with_capacity(files.len());
            let mut parsed = Some(Vec::with_capacity(files.len()));
            for f in files {
                match f.parsed {
                    Some(p) => {
                        if let Some(all) = parsed.as_mut() {
                            all.push(p);
                        }
                    }
                    None => parsed = None,
                }
                sources.push(RuleSource {
                    path: f.path,
                    text: f.text,
                });
            }
            (sources, parsed)
        }
    };
    Ok(Stored {
        version: entry.version,
        sources,
        parsed,
    })
}

/// Compiles a stored set off the async threads (a large set takes a while): from the parsed
/// forms when the store has them (no YAML read again), else from the text.
pub async fn compile(stored: Stored) -> anyhow::Result<RuleSet> {
    tokio::task::spawn_blocking(move || {
        Ok::<_, anyhow::Error>(match stored.parsed {
            Some(parsed) => RuleSet::compile_parsed(&stored.sources, parsed)?,
            None => RuleSet::compile(&stored.sources)?,
        })
    })
    .await?
}

/// The live view of the active rule set that the stages of one process share (match and render
/// in one `whale run` hold one compiled set, not two). `whale run` makes one and hands a clone
/// to each stage's constructor; the first [`SharedRules::live`] starts the watch, the others get
/// the same view. Not a global: two handles are two views (tests, benchmarks).
#[derive(Clone, Default)]
pub struct SharedRules(std::sync::Arc<tokio::sync::OnceCell<Live<RuleSet>>>);

impl SharedRules {
    /// A handle whose view is not started yet.
    pub fn new() -> SharedRules {
        SharedRules::default()
    }

    /// The shared live view, started (and its first set compiled) by the first caller.
    pub async fn live(&self, nats: &Nats) -> anyhow::Result<Live<RuleSet>> {
        self.0.get_or_try_init(|| watch(nats)).await.cloned()
    }
}

/// A new live view of the active rule set: each new manifest in `active` is read, compiled,
/// and replaces the current set; one that fails keeps the last good one.
pub async fn watch(nats: &Nats) -> anyhow::Result<Live<RuleSet>> {
    let b = bucket(nats).await?;
    Live::watch_with(nats, subjects::KV_RULES, ACTIVE, move |bytes| {
        let b = b.clone();
        Box::pin(async move {
            let entry = Entry::parse(&bytes)?;
            let set = compile(load(&b, entry).await?).await?;
            whale_kernel::metrics::rule_set_in_force(set.version());
            Ok(set)
        })
    })
    .await
}

/// The active set's manifest, if any.
pub async fn active_entry(nats: &Nats) -> anyhow::Result<Option<Entry>> {
    match bucket(nats).await?.get(ACTIVE).await? {
        Some(b) => Ok(Some(Entry::parse(&b)?)),
        None => Ok(None),
    }
}

/// The stored active set, if any.
pub async fn active(nats: &Nats) -> anyhow::Result<Option<Stored>> {
    let b = bucket(nats).await?;
    match b.get(ACTIVE).await? {
        Some(m) => Ok(Some(load(&b, Entry::parse(&m)?).await?)),
        None => Ok(None),
    }
}

/// The git commit of `dir` when it is inside a git checkout (`None` otherwise, or without git).
pub fn git_of(dir: &Path) -> Option<Git> {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    };
    let commit = git(&["rev-parse", "--verify", "HEAD"])?;
    let author = git(&["log", "-1", "--format=%an <%ae>"]).unwrap_or_default();
    let subject = git(&["log", "-1", "--format=%s"]).unwrap_or_default();
    let dirty = git(&["status", "--porcelain", "--", "."]).is_some_and(|s| !s.is_empty());
    Some(Git {
        commit,
        author,
        subject,
        dirty,
    })
}

fn now() -> (String, String) {
    let t = time::OffsetDateTime::now_utc();
    (
        whale_kernel::envelope::format_time(t),
        format!("{HISTORY_PREFIX}{:020}", t.unix_timestamp_nanos().max(0)),
    )
}

/// Makes `set` the active one: its chunks first, then its manifest under `v.<version>` (kept
/// for ever; the first apply's stays), a history entry, and last `active` — one small put, so
/// workers switch to the whole new set or not at all. Returns the manifest and the revision of
/// `active` (the apply's natural id).
pub async fn apply(
    nats: &Nats,
    set: &RuleSet,
    provenance: Provenance,
    action: &str,
) -> anyhow::Result<(Entry, u64)> {
    let b = bucket(nats).await?;
    let previous = match b.get(ACTIVE).await? {
        Some(m) => Entry::parse(&m).ok().map(|e| e.version),
        None => None,
    };
    let content = content(set)?;
    let chunks = write_chunks(&b, &content).await?;
    let (applied_at, history_key) = now();
    let entry = Entry {
        version: set.version().to_owned(),
        applied_at,
        action: action.to_owned(),
        rules: Some(set.len()),
        files: Some(set.sources().len()),
        bytes: Some(content.len()),
        chunks,
        previous,
        provenance,
        sources: None,
    };
    let manifest = Bytes::from(serde_json::to_vec(&entry)?);
    // A version applied before (or stored by an older whale) keeps its first manifest.
    match b
        .create(&version_key(set.version()), manifest.clone(), Ttl::Bucket)
        .await
    {
        Ok(_) | Err(KvError::Conflict) => {}
        Err(e) => return Err(e.into()),
    }
    b.put(&history_key, manifest.clone(), Ttl::Bucket).await?;
    let revision = b.put(ACTIVE, manifest, Ttl::Bucket).await?;
    Ok((entry, revision))
}

/// The manifest of one version: its own key, or else (a set applied in the old form before
/// `v.<version>` keys existed) a revision of `active`.
pub async fn version_entry(nats: &Nats, version: &str) -> anyhow::Result<Option<Entry>> {
    let b = bucket(nats).await?;
    if let Some(m) = b.get(&version_key(version)).await? {
        return Ok(Some(Entry::parse(&m)?));
    }
    Ok(legacy(&b).await?.into_iter().find(|e| e.version == version))
}

/// The applies of the old single-value form among the revisions of `active`, newest first.
async fn legacy(b: &Bucket) -> anyhow::Result<Vec<Entry>> {
    Ok(b.history(ACTIVE)
        .await?
        .into_iter()
        .rev()
        .filter_map(|v| Entry::parse(&v.value).ok())
        .filter(|e| e.sources.is_some())
        .collect())
}

/// The history keys, oldest first (the key is the time in nanoseconds, fixed width).
async fn history_keys(b: &Bucket) -> anyhow::Result<Vec<String>> {
    let mut keys = b.keys(HISTORY_PREFIX).await?;
    keys.sort_unstable();
    Ok(keys)
}

/// The stored set of one version (`active` names the active one).
pub async fn version(nats: &Nats, version: &str) -> anyhow::Result<Option<Stored>> {
    let entry = if version == ACTIVE {
        active_entry(nats).await?
    } else {
        version_entry(nats, version).await?
    };
    match entry {
        Some(e) => Ok(Some(load(&bucket(nats).await?, e).await?)),
        None => Ok(None),
    }
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// The set that was active at `at` (RFC 3339): the last one applied at or before it; `None` if
/// the history does not reach back that far.
pub async fn in_force_at(nats: &Nats, at: &str) -> anyhow::Result<Option<Stored>> {
    let at = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)?;
    let b = bucket(nats).await?;
    // The history keys name their time: the last one at or before `at` is the set in force.
    let bound = format!("{HISTORY_PREFIX}{:020}", at.unix_timestamp_nanos().max(0));
    let key = history_keys(&b).await?.into_iter().rfind(|k| *k <= bound);
    let found = match key {
        Some(k) => match b.get(&k).await? {
            Some(m) => Some(Entry::parse(&m)?),
            None => None,
        },
        // before the first apply of this form: the old form's revisions
        None => legacy(&b)
            .await?
            .into_iter()
            .find(|e| parse_time(&e.applied_at).is_some_and(|t| t <= at)),
    };
    match found {
        Some(e) => Ok(Some(load(&b, e).await?)),
        None => Ok(None),
    }
}

/// Every apply and rollback, newest first, at most `limit`: the history entries, and the
/// applies of the old single-value form still among the revisions of `active`.
pub async fn history(nats: &Nats, limit: usize) -> anyhow::Result<Vec<Entry>> {
    let b = bucket(nats).await?;
    let keys = history_keys(&b).await?;
    let mut out: Vec<Entry> = Vec::new();
    for key in keys.iter().rev().take(limit) {
        if let Some(m) = b.get(key).await? {
            out.push(Entry::parse(&m)?);
        }
    }
    if out.len() < limit {
        // the old form's applies all came before the first of this form
        out.extend(legacy(&b).await?);
        out.truncate(limit);
    }
    Ok(out)
}

/// How one file differs between two versions.
#[derive(Debug, Clone, Serialize)]
pub struct FileDiff {
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub status: &'static str,
    /// Unified diff (`--- a/<path>`, `+++ b/<path>`, hunks with 3 lines of context).
    pub diff: String,
}

/// The files that differ between `a` and `b` (in `b`'s order, then those only in `a`), each as
/// a unified diff; `file` keeps one path only.
pub fn diff(a: &Stored, b: &Stored, file: Option<&str>) -> Vec<FileDiff> {
    let old: std::collections::HashMap<&str, &str> = a
        .sources
        .iter()
        .map(|s| (s.path.as_str(), s.text.as_str()))
        .collect();
    let new: std::collections::HashSet<&str> = b.sources.iter().map(|s| s.path.as_str()).collect();
    let mut out = Vec::new();
    let one = |path: &str, before: &str, after: &str, status| FileDiff {
        path: path.to_owned(),
        status,
        diff: similar::TextDiff::from_lines(before, after)
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{path}"), &format!("b/{path}"))
            .to_string(),
    };
    let wanted = |p: &str| file.is_none_or(|f| f == p);
    for s in b.sources.iter().filter(|s| wanted(&s.path)) {
        match old.get(s.path.as_str()) {
            Some(before) if *before == s.text => {}
            Some(before) => out.push(one(&s.path, before, &s.text, "changed")),
            None => out.push(one(&s.path, "", &s.text, "added")),
        }
    }
    for s in a
        .sources
        .iter()
        .filter(|s| wanted(&s.path) && !new.contains(s.path.as_str()))
    {
        out.push(one(&s.path, &s.text, "", "removed"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'a' + (x % 26) as u8
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_content_within_the_size() {
        let d = data(3 << 20, 7);
        let bounds = chunk_bounds(&d, 512 << 10);
        assert_eq!(bounds.first().map(|r| r.start), Some(0));
        assert_eq!(bounds.last().map(|r| r.end), Some(d.len()));
        for w in bounds.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(bounds.iter().all(|r| r.len() <= 512 << 10));
        // all but the last at least the minimum (a quarter of the maximum)
        assert!(bounds[..bounds.len() - 1]
            .iter()
            .all(|r| r.len() >= 128 << 10));
        assert!(chunk_bounds(&[], 1024).is_empty());
    }

    #[test]
    fn an_edit_changes_the_chunks_around_it_only() {
        let d = data(4 << 20, 11);
        let mut e = d.clone();
        e.splice(
            2_000_000..2_000_010,
            b"an edit of another length".iter().copied(),
        );
        let hashes = |d: &[u8]| -> Vec<String> {
            chunk_bounds(d, 512 << 10)
                .into_iter()
                .map(|r| sha256_hex(&d[r]))
                .collect()
        };
        let (a, b) = (hashes(&d), hashes(&e));
        let same = b.iter().filter(|h| a.contains(h)).count();
        assert!(a.len() >= 8, "{} chunks", a.len());
        assert!(
            same + 2 >= b.len(),
            "{same} of {} chunks unchanged after one edit",
            b.len()
        );
    }

    #[test]
    fn the_old_single_value_form_parses_as_a_manifest_with_inline_files() {
        let old = br#"{"version":"abc","applied_at":"2026-01-02T03:04:05Z","sources":[{"path":"p.yaml","text":"x"}]}"#;
        let e = Entry::parse(old).unwrap();
        assert_eq!(e.version, "abc");
        assert_eq!(e.action, "apply");
        assert_eq!(e.files, Some(1));
        assert!(e.chunks.is_empty());
        assert_eq!(e.sources.as_ref().map(Vec::len), Some(1));
        // written manifests never carry the files
        let json = serde_json::to_value(&e).unwrap();
        assert!(json.get("sources").is_none(), "{json}");
    }
}
