//! Query parameters for listing executions and for the event stream, spelled as StackStorm's
//! router expects them (arrays comma-joined, `parent=null`, `sort_desc=True`).

use crate::model::Status;

/// Filters of `GET /api/v1/executions` (exact equality, as StackStorm applies them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListFilter {
    pub action: Option<String>,
    pub status: Option<Status>,
    pub user: Option<String>,
    pub rule: Option<String>,
    pub trigger_instance: Option<String>,
    /// `start_timestamp` strictly after (StackStorm's timestamp format or RFC 3339).
    pub timestamp_gt: Option<String>,
    /// `start_timestamp` strictly before.
    pub timestamp_lt: Option<String>,
    /// Only top-level executions (`parent=null`), like `st2 execution list`.
    pub parent_null: bool,
    /// Page size; StackStorm's default is 100 and non-admins may not ask for more.
    pub limit: Option<u32>,
    pub offset: Option<u32>,
    /// Oldest first instead of StackStorm's default newest first.
    pub oldest_first: bool,
    /// `include_attributes` (comma-joined on the wire).
    pub include_attributes: Vec<String>,
    /// `exclude_attributes`; StackStorm only allows result, trigger_instance, status.
    pub exclude_attributes: Vec<String>,
}

impl ListFilter {
    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                q.push((k, v));
            }
        };
        put("action", self.action.clone());
        put(
            "status",
            self.status.as_ref().map(|s| s.as_str().to_owned()),
        );
        put("user", self.user.clone());
        put("rule", self.rule.clone());
        put("trigger_instance", self.trigger_instance.clone());
        put("timestamp_gt", self.timestamp_gt.clone());
        put("timestamp_lt", self.timestamp_lt.clone());
        put("parent", self.parent_null.then(|| "null".to_owned()));
        put("limit", self.limit.map(|l| l.to_string()));
        put("offset", self.offset.map(|o| o.to_string()));
        let order = if self.oldest_first {
            "sort_asc"
        } else {
            "sort_desc"
        };
        put(order, Some("True".to_owned()));
        put(
            "include_attributes",
            (!self.include_attributes.is_empty()).then(|| self.include_attributes.join(",")),
        );
        put(
            "exclude_attributes",
            (!self.exclude_attributes.is_empty()).then(|| self.exclude_attributes.join(",")),
        );
        q
    }
}

/// What to subscribe to on `GET /stream/v1/stream`. Empty lists mean "no filter".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamFilter {
    /// Event names or fnmatch globs, e.g. `st2.execution__update`, `st2.execution__*`.
    pub events: Vec<String>,
    pub action_refs: Vec<String>,
    pub execution_ids: Vec<String>,
    /// With `end_execution_id`: the stream closes after this event reports that execution terminal.
    pub end_event: Option<String>,
    pub end_execution_id: Option<String>,
}

impl StreamFilter {
    /// Execution create and update events only.
    pub fn executions() -> Self {
        Self {
            events: vec![
                "st2.execution__create".into(),
                "st2.execution__update".into(),
            ],
            ..Self::default()
        }
    }

    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        let lists = [
            ("events", &self.events),
            ("action_refs", &self.action_refs),
            ("execution_ids", &self.execution_ids),
        ];
        for (k, v) in lists {
            if !v.is_empty() {
                q.push((k, v.join(",")));
            }
        }
        if let Some(e) = &self.end_event {
            q.push(("end_event", e.clone()));
        }
        if let Some(e) = &self.end_execution_id {
            q.push(("end_execution_id", e.clone()));
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_spelling() {
        let q = ListFilter {
            action: Some("a.b".into()),
            status: Some(Status::Running),
            parent_null: true,
            limit: Some(5),
            include_attributes: vec!["id".into(), "status".into()],
            ..ListFilter::default()
        }
        .query();
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            q,
            [
                ("action", "a.b"),
                ("status", "running"),
                ("parent", "null"),
                ("limit", "5"),
                ("sort_desc", "True"),
                ("include_attributes", "id,status")
            ]
        );
        let s = StreamFilter {
            execution_ids: vec!["1".into(), "2".into()],
            ..StreamFilter::executions()
        }
        .query();
        assert_eq!(s[0].1, "st2.execution__create,st2.execution__update");
        assert_eq!(s[1], ("execution_ids", "1,2".to_owned()));
    }
}
