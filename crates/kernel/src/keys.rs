//! Every KV key whale writes, named in one place: a stage asks for `keys::approval(task_id)`
//! instead of spelling `approval.` itself, so two stages cannot drift apart on a key and a
//! reader of this file sees the whole layout of `whale_state` and `whale_claims`.

/// `whale_state`: a task's approval (`approval.<task_id>`).
pub const APPROVAL: &str = "approval.";
/// `whale_state`: an execution whale followed (`exec.<task_id>` → record).
pub const EXEC: &str = "exec.";
/// `whale_state`: StackStorm execution id → task id (`exec-id.<execution_id>`).
pub const EXEC_ID: &str = "exec-id.";
/// `whale_state`: a notification's sent-marker (`notified.<hash of the request id>`).
pub const NOTIFIED: &str = "notified.";
/// `whale_state`: an operator's drain of a cluster (`drain.<cluster>`).
pub const DRAIN: &str = "drain.";
/// `whale_state`: the last circuit-breaker report of a cluster (`breaker.<cluster>`).
pub const BREAKER: &str = "breaker.";
/// `whale_state`: a dead letter being retried (`dead-letter-retry.<id>`).
pub const DEAD_LETTER_RETRY: &str = "dead-letter-retry.";
/// `whale_claims`: a task's execution claim (`claim.<task_id>`).
pub const CLAIM: &str = "claim.";
/// `whale_state`: the key that signs the console's session cookies (kept forever, created by
/// the first `whale run` that needs it; `console.session_secret` overrides it).
pub const CONSOLE_SESSION_KEY: &str = "console.session-key";

/// Whether `id` can be a KV key part as it is: letters, digits, `-` and `_`, at most 200 bytes.
pub fn is_safe(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A KV-safe key part: `id` as it is when [`is_safe`], else `h` and 40 hex digits of its hash.
pub fn part(id: &str) -> String {
    if is_safe(id) {
        id.to_owned()
    } else {
        format!("h{}", hashed(id))
    }
}

/// 40 hex digits of the hash of `id` (the part of keys made from arbitrary text).
pub fn hashed(id: &str) -> String {
    crate::digest(&[id])[..40].to_owned()
}

/// `approval.<task_id>` (ids outside KV's alphabet hashed).
pub fn approval(task_id: &str) -> String {
    format!("{APPROVAL}{}", part(task_id))
}

/// `exec.<task_id>` (ids outside KV's alphabet hashed).
pub fn exec(task_id: &str) -> String {
    format!("{EXEC}{}", part(task_id))
}

/// `exec-id.<execution_id>` (ids outside KV's alphabet hashed).
pub fn exec_id(execution_id: &str) -> String {
    format!("{EXEC_ID}{}", part(execution_id))
}

/// `notified.<hash>`: always hashed (request ids are free text).
pub fn notified(request_id: &str) -> String {
    format!("{NOTIFIED}{}", hashed(request_id))
}

/// `drain.<cluster>`.
pub fn drain(cluster: &str) -> String {
    format!("{DRAIN}{cluster}")
}

/// `breaker.<cluster>`.
pub fn breaker(cluster: &str) -> String {
    format!("{BREAKER}{cluster}")
}

/// `dead-letter-retry.<task_id>`.
pub fn dead_letter_retry(task_id: &str) -> String {
    format!("{DEAD_LETTER_RETRY}{task_id}")
}

/// `claim.<task_id>`, or None when the task id cannot be a key as it is (letters, digits, `-`,
/// `_` and `=`, at most 200 bytes): claims guard executions, so no id is hashed here.
pub fn claim(task_id: &str) -> Option<String> {
    let ok = !task_id.is_empty()
        && task_id.len() <= 200
        && task_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b));
    ok.then(|| format!("{CLAIM}{task_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_spelling() {
        assert_eq!(approval("t-1_a"), "approval.t-1_a");
        assert_eq!(exec("t1"), "exec.t1");
        assert_eq!(exec_id("e1"), "exec-id.e1");
        assert_eq!(drain("east"), "drain.east");
        assert_eq!(breaker("east"), "breaker.east");
        assert_eq!(claim("t-abc123").as_deref(), Some("claim.t-abc123"));
        assert_eq!(claim("a.b"), None);
        let h = approval("a.b");
        assert!(
            h.starts_with("approval.h") && h.len() == "approval.h".len() + 40,
            "{h}"
        );
        assert_eq!(
            notified("x"),
            format!("notified.{}", &crate::digest(&["x"])[..40])
        );
    }
}
