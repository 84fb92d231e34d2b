//! The message a channel gets when a task waits for approval: what would run, where, until
//! when, and the approve / deny links (rendered in each channel's syntax by the notifier).

use serde_json::json;
use time::OffsetDateTime;
use whale_kernel::envelope::format_time;
use whale_kernel::records::{self, Link, NotifyKind, NotifyRequest};
use whale_kernel::Output;

use crate::store::Approval;
use crate::{link, Links};

/// The notification request (msg id `apv:<task_id>:<channel>`).
pub fn request(a: &Approval, channel: &str, links: &Links) -> Output {
    let t = &a.task;
    let mut params = t.parameters.to_string();
    if params.len() > 400 {
        let mut end = 400;
        while !params.is_char_boundary(end) {
            end -= 1;
        }
        params = format!("{}…", &params[..end]);
    }
    let mut text = format!(
        "🔐 **Approval needed** · rule **{}**\n> action `{}` on cluster `{}`\n> parameters `{params}`\n> event `{}` ({}), task `{}`\n> expires {}\nOr: `whale approvals approve {}` / `whale approvals deny {} --reason ...`",
        t.rule, t.action, t.cluster, t.event_id, t.event_type, t.task_id, format_time(a.expires), t.task_id, t.task_id
    );
    if let Some(item) = &t.item {
        // a task of a `for_each` rule: say which element it is for
        let mut v = item.value.to_string();
        if v.len() > 300 {
            let mut end = 300;
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            v = format!("{}…", &v[..end]);
        }
        text.push_str(&format!(
            "\n> for element {} of the event: `{v}`",
            item.index
        ));
    }
    let mut out_links = Vec::new();
    let mut record = json!({
        "kind": "approval",
        "task": t,
        "expires": format_time(a.expires),
    });
    match &links.secret {
        Some(secret) => {
            for (label, action) in [("Approve", "approve"), ("Deny", "deny")] {
                let url = link::url(
                    &links.base,
                    secret,
                    &t.task_id,
                    action,
                    a.link_expires_unix,
                    &a.nonce,
                );
                record[format!("{action}_url")] = json!(url);
                out_links.push(Link {
                    label: label.into(),
                    url,
                });
            }
        }
        None => text.push_str("\n(no links: WHALE_APPROVAL_SECRET is not set)"),
    }
    let req = NotifyRequest {
        id: records::msg_id::notify(NotifyKind::Approval, &t.task_id, channel),
        channel: channel.to_owned(),
        kind: NotifyKind::Approval,
        task_id: t.task_id.clone(),
        event_id: t.event_id.clone(),
        rule: t.rule.clone(),
        text,
        links: out_links,
        record,
        created: OffsetDateTime::now_utc(),
    };
    req.output()
}
