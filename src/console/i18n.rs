//! The console's UI text in English and Simplified Chinese: one table, one row per text, so a
//! text cannot exist in one language only. The language is the `whale_lang` cookie (set by the
//! switch in the header), else the browser's `Accept-Language`.

use axum::http::HeaderMap;

/// A UI language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

/// The cookie that keeps the choice.
pub const COOKIE: &str = "whale_lang";

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "en" => Some(Lang::En),
            "zh" | "zh-CN" => Some(Lang::Zh),
            _ => None,
        }
    }

    /// The cookie, else the first language of `Accept-Language` that the console speaks.
    pub fn of(headers: &HeaderMap) -> Lang {
        if let Some(l) = whale_kernel::session::cookie(headers, COOKIE).and_then(Lang::parse) {
            return l;
        }
        let accept = headers
            .get(axum::http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        for part in accept.split(',') {
            let tag = part
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if tag.starts_with("zh") {
                return Lang::Zh;
            }
            if tag.starts_with("en") {
                return Lang::En;
            }
        }
        Lang::En
    }

    /// The text of `key` in this language (the key itself when it is missing from the table,
    /// which the unit test forbids).
    pub fn t(self, key: &'static str) -> &'static str {
        match TEXTS.iter().find(|(k, _, _)| *k == key) {
            Some((_, en, zh)) => match self {
                Lang::En => en,
                Lang::Zh => zh,
            },
            None => key,
        }
    }
}

/// (key, English, Simplified Chinese).
pub const TEXTS: &[(&str, &str, &str)] = &[
    ("app", "whale console", "whale 控制台"),
    ("nav.overview", "Overview", "概览"),
    ("nav.events", "Events", "事件"),
    ("nav.executions", "Executions", "执行"),
    ("nav.approvals", "Approvals", "审批"),
    ("nav.dead_letters", "Dead letters", "死信"),
    ("nav.audit", "Audit", "审计"),
    ("nav.rules", "Rules", "规则"),
    ("nav.main", "Main navigation", "主导航"),
    ("lang.switch", "中文", "English"),
    ("sign_in", "Sign in", "登录"),
    ("sign_out", "Sign out", "退出"),
    ("sign_in.token", "API token or OIDC token", "API 令牌或 OIDC 令牌"),
    ("sign_in.help", "Sign in with a named whale token (viewer, operator or admin) or a token from your identity provider.", "使用 whale 命名令牌（viewer、operator 或 admin）或身份提供方签发的令牌登录。"),
    ("sign_in.open", "No authentication is configured (loopback only): continue without a token.", "未配置认证（仅本机回环）：无需令牌即可继续。"),
    ("sign_in.refused", "This token was not accepted", "该令牌未被接受"),
    ("signed_in_as", "Signed in as", "当前用户"),
    ("role", "role", "角色"),
    ("not_here", "Not available in this process", "此进程中不可用"),
    ("overview.backlog", "Backlog per stage", "各阶段积压"),
    ("overview.streams", "Streams", "消息流"),
    ("overview.clusters", "Clusters", "集群"),
    ("overview.rejections", "Recent rejections", "最近的拒绝"),
    ("overview.failures", "Recent failed executions", "最近失败的执行"),
    ("overview.live", "Refreshes live every 5 s.", "每 5 秒实时刷新。"),
    ("stage", "Stage", "阶段"),
    ("consumer", "Consumer", "消费者"),
    ("pending", "Pending", "待处理"),
    ("ack_pending", "Awaiting ack", "待确认"),
    ("redelivered", "Redelivered", "重投"),
    ("stream", "Stream", "流"),
    ("messages", "Messages", "消息数"),
    ("rate", "Rate (msg/s)", "速率（条/秒）"),
    ("cluster", "Cluster", "集群"),
    ("breaker", "Breaker", "熔断器"),
    ("drain", "Drain", "摘流"),
    ("open", "open", "打开"),
    ("closed", "closed", "关闭"),
    ("drained", "drained", "已摘流"),
    ("serving", "serving", "服务中"),
    ("none", "None.", "无。"),
    ("events.query", "Query", "查询"),
    ("events.from", "From", "起始"),
    ("events.to", "To", "截止"),
    ("events.kind", "Kinds", "类型"),
    ("events.search", "Search", "搜索"),
    ("events.total", "matches", "条匹配"),
    ("events.by_type", "By type", "按类型"),
    ("events.by_source", "By source", "按来源"),
    ("events.sample", "counted over the newest matches:", "统计范围为最新的匹配："),
    ("events.newer", "Newer", "较新"),
    ("events.older", "Older", "较旧"),
    ("time", "Time", "时间"),
    ("kind", "Kind", "种类"),
    ("type", "Type", "类型"),
    ("source", "Source", "来源"),
    ("event", "Event", "事件"),
    ("rule", "Rule", "规则"),
    ("status", "Status", "状态"),
    ("action", "Action", "动作"),
    ("task", "Task", "任务"),
    ("execution", "Execution", "执行"),
    ("summary", "Summary", "摘要"),
    ("trace", "Trace", "追踪"),
    ("trace.title", "Trace of event", "事件追踪"),
    ("trace.outcome", "Outcome", "结果"),
    ("trace.not_matched", "Rules that listened but did not match", "监听但未匹配的规则"),
    ("trace.version", "Why not, evaluated with rule set", "未匹配原因，使用的规则集版本"),
    ("trace.unknown", "The index holds nothing for this event id.", "索引中没有该事件 ID 的任何记录。"),
    ("trace.event", "The event", "事件内容"),
    ("exec.filter", "Filter", "筛选"),
    ("exec.retry", "Retry", "重试"),
    ("exec.pause", "Pause", "暂停"),
    ("exec.resume", "Resume", "恢复"),
    ("exec.cancel", "Cancel", "取消"),
    ("exec.parameters", "Parameters", "参数"),
    ("exec.output", "Output", "输出"),
    ("exec.log", "Log", "日志"),
    ("exec.created", "Created", "创建时间"),
    ("exec.done", "Done", "已完成"),
    ("any", "any", "全部"),
    ("approvals.pending", "Pending approvals", "待审批"),
    ("approvals.decided", "Decided", "已处理"),
    ("approvals.reason", "Reason", "理由"),
    ("approvals.approve", "Approve", "批准"),
    ("approvals.deny", "Deny", "拒绝"),
    ("approvals.expires", "Expires", "过期时间"),
    ("approvals.by", "Decided by", "处理人"),
    ("dl.reason", "Why", "原因"),
    ("dl.retry", "Retry", "重试"),
    ("dl.all", "Show retried ones too", "同时显示已重试的"),
    ("audit.who", "Who", "操作人"),
    ("audit.outcome", "Outcome", "结果"),
    ("audit.target", "Target", "对象"),
    ("audit.since", "Since", "起始"),
    ("rules.version", "Active version", "当前版本"),
    ("rules.applied", "applied", "应用于"),
    ("rules.files", "Files", "文件"),
    ("rules.none", "No rule set has been applied (whale rules apply DIR).", "尚未应用规则集（whale rules apply DIR）。"),
    ("rules.try", "Try a rule set on an event", "在事件上试运行规则集"),
    ("rules.try_text", "Rule file (YAML; empty: the active set)", "规则文件（YAML；留空：使用当前规则集）"),
    ("rules.try_event", "Event id (from the index) or event JSON", "事件 ID（来自索引）或事件 JSON"),
    ("rules.try_run", "Try", "试运行"),
    ("rules.matched", "matched", "匹配"),
    ("rules.not_matched", "did not match", "未匹配"),
    ("rules.rendered", "Rendered parameters", "渲染后的参数"),
    ("rules.history", "History of versions", "版本历史"),
    ("rules.ver", "Version", "版本"),
    ("rules.applied_at", "Applied at", "应用时间"),
    ("rules.by", "By", "操作者"),
    ("rules.git", "Git commit", "Git 提交"),
    ("rules.dirty", "uncommitted changes", "含未提交的修改"),
    ("rules.active", "active", "当前"),
    ("rules.rollback", "Roll back to this version", "回滚到此版本"),
    ("rules.rolled_back", "rolled back to", "已回滚到"),
    ("rules.already", "is already active", "已是当前版本"),
    ("rules.diff", "Diff", "差异"),
    ("rules.diff_from", "From version", "起始版本"),
    ("rules.diff_to", "To version", "目标版本"),
    ("rules.same", "The two versions have the same files.", "两个版本的文件相同。"),
    ("rules.backtest", "Backtest the active rule set", "回测当前规则集"),
    ("rules.bt_from", "From (RFC 3339 or an age like 24h)", "开始（RFC 3339 或如 24h 的时长）"),
    ("rules.bt_to", "To", "结束"),
    ("rules.bt_type", "Event type (optional)", "事件类型（可选）"),
    ("rules.bt_run", "Run backtest", "运行回测"),
    ("rules.bt_operator", "A backtest needs the operator role.", "回测需要 operator 角色。"),
    ("rules.bt_examined", "Events examined", "已检查的事件"),
    ("rules.bt_limited", "stopped at the limit (console.backtest_max_events): narrow the range", "已达上限（console.backtest_max_events）：请缩小范围"),
    ("rules.bt_unreadable", "unreadable", "无法读取"),
    ("rules.bt_compared", "Compared with", "对比来源"),
    ("rules.bt_nc", "Not comparable", "无法对比"),
    ("rules.bt_would", "Would match", "将匹配"),
    ("rules.bt_fired", "Fired", "实际触发"),
    ("rules.bt_new", "new", "新增"),
    ("rules.bt_gone", "gone", "消失"),
    ("rules.bt_tasks", "Tasks", "任务"),
    ("rules.bt_examples", "Examples", "示例"),
    ("done", "Done", "完成"),
    ("refused", "Refused", "被拒绝"),
    ("error", "Error", "错误"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_is_translated_once() {
        let mut keys = std::collections::BTreeSet::new();
        for (k, en, zh) in TEXTS {
            assert!(keys.insert(*k), "{k} twice");
            assert!(!en.is_empty() && !zh.is_empty(), "{k}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "accept-language",
            "zh-CN,zh;q=0.9,en;q=0.8".parse().unwrap(),
        );
        assert_eq!(Lang::of(&h), Lang::Zh);
        h.insert("cookie", "whale_lang=en".parse().unwrap());
        assert_eq!(Lang::of(&h), Lang::En);
        assert_eq!(Lang::En.t("nav.events"), "Events");
        assert_eq!(Lang::Zh.t("nav.events"), "事件");
    }
}
