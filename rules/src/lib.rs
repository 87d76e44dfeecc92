//! The files of alerting, parsed and checked without running anything: rule
//! groups in Prometheus's layout with SQL (`rules`), their annotation
//! templates (`template`) and routing in Alertmanager's format (`routing`).
//! Kept apart from the evaluator so `vigil rules check` and the fuzz targets
//! need no query engine.

pub mod routing;
pub mod rules;
pub mod template;
pub mod time_interval;

pub use routing::{
    Destination, EmailConfig, InhibitRule, Matcher, Receiver, Routing, RoutingError, Webhook,
    WebhookKind,
};
pub use rules::{
    check_sql, load_dir, load_file, load_files, parse_duration, ErrorState, NoDataState, Rule,
    RuleFileError, RuleGroup, RuleKind,
};
pub use template::{Data, Template, TemplateError};
pub use time_interval::TimeInterval;
