//! How a watch learns what exists when it starts (and again after the API server has
//! forgotten its place): a **streaming list** where the API server offers one, **paged lists**
//! where it does not.
//!
//! A streaming list is one watch request with `sendInitialEvents=true`: the API server sends
//! every object as an event and then a bookmark annotated `k8s.io/initial-events-end`
//! (kube-apiserver's WatchList feature, on by default since Kubernetes 1.32, served from its
//! watch cache). Paged lists are the classic start: `list` in pages of 500 (`limit` and
//! `continue`), then a watch from the list's resourceVersion. Both fill a cache the same way;
//! the streaming list needs one request instead of one per 500 objects, and the API server
//! never builds a page.
//!
//! [`InitialList::Auto`], the default, asks for a streaming list and falls back to paged lists,
//! for the rest of the process, when the API server shows it cannot serve one:
//! - it **refuses** the request (400 or 422: kube-apiserver with WatchList off answers 422
//!   "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
//!   and one older than 1.27 refuses `resourceVersionMatch` on a watch; so do aggregated API
//!   servers, which have their own feature gates);
//! - or [`UNFINISHED_LIMIT`] streaming lists in a row **end before their end bookmark**.
//!   kube-runtime's watcher restarts such a list with a new `Init` and reports no error, so
//!   this counts `Init`s without an `InitDone` between them; a proxy that strips the query
//!   parameters, or a server that ignores them, never sends the bookmark;
//! - or one streaming list has not finished [`PATIENCE`] after it began (the same servers,
//!   found before their watch times out).
//!
//! Errors that say nothing about streaming (403, 404, 429, 5xx, a lost connection) pass
//! through unchanged to the caller's backoff, in either mode.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use kube::runtime::watcher::{self, Event};

/// How a watch gets its initial state (`--initial-list`, `INITIAL_LIST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InitialList {
    /// A streaming list where the API server serves one, paged lists where it does not.
    #[default]
    Auto,
    /// Always a streaming list, never a fallback (an API server known to serve them).
    Streaming,
    /// Always paged lists of [`PAGE_SIZE`] (an API server known not to serve streaming lists).
    Paged,
}

/// Objects per page of a paged list: kube-runtime's default, what client-go's reflector asks.
pub const PAGE_SIZE: u32 = 500;

/// Streaming lists in a row that may end before their end bookmark before `Auto` uses paged
/// lists instead.
pub const UNFINISHED_LIMIT: u32 = 3;

/// How long `Auto` waits for one streaming list to finish before it uses paged lists. Far
/// longer than kube-apiserver takes to stream tens of thousands of objects from its cache.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The kube-runtime watcher settings for `streaming` or paged lists.
pub fn config(streaming: bool) -> watcher::Config {
    let paged = watcher::Config::default().page_size(PAGE_SIZE);
    if streaming {
        paged.streaming_lists()
    } else {
        paged
    }
}

/// Why `Auto` stopped asking for streaming lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// The API server refused a streaming list: its status code and message.
    Refused {
        /// The HTTP status code of the refusal.
        code: u16,
        /// The API server's message.
        message: String,
    },
    /// [`UNFINISHED_LIMIT`] streaming lists in a row ended before their end bookmark.
    Unfinished,
    /// A streaming list had not finished after [`PATIENCE`].
    TooSlow,
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused { code, message } => {
                write!(
                    f,
                    "the API server refused a streaming list ({code}: {message})"
                )
            }
            Self::Unfinished => write!(
                f,
                "{UNFINISHED_LIMIT} streaming lists in a row ended before their initial-events-end bookmark"
            ),
            Self::TooSlow => write!(
                f,
                "a streaming list had not finished after {} s",
                PATIENCE.as_secs()
            ),
        }
    }
}

/// The fallback a status answered to a streaming list's watch calls for: `Some` when it is the
/// API server refusing streaming lists (not a fault a retry may cure, nor a missing permission
/// a paged list would hit too).
fn refusal(status: &kube::core::Status) -> Option<Fallback> {
    let refused = status.code == 400
        || status.code == 422
        || status.message.contains("sendInitialEvents")
        || status.message.contains("resourceVersionMatch");
    refused.then(|| Fallback::Refused {
        code: status.code,
        message: status.message.clone(),
    })
}

/// The fallback's rule, apart from the stream it watches: fed every item a streaming watch
/// yields, it says when to use paged lists instead.
#[derive(Debug, Default)]
pub struct Judge {
    /// Streaming lists begun (an `Init`) since the last one that finished (an `InitDone`).
    unfinished: u32,
}

impl Judge {
    /// Whether a streaming list has begun and not finished.
    pub fn listing(&self) -> bool {
        self.unfinished > 0
    }

    /// Sees one item of a streaming watch: `Some` when it shows the API server cannot serve
    /// streaming lists (the item is then dropped: the paged watch starts over with its own
    /// `Init`).
    pub fn observe<K>(&mut self, item: &Result<Event<K>, watcher::Error>) -> Option<Fallback> {
        match item {
            Ok(Event::Init) => {
                if self.unfinished >= UNFINISHED_LIMIT {
                    return Some(Fallback::Unfinished);
                }
                self.unfinished += 1;
                None
            }
            Ok(Event::InitDone) => {
                self.unfinished = 0;
                None
            }
            Ok(_) => None,
            Err(
                watcher::Error::WatchStartFailed(kube::Error::Api(status))
                | watcher::Error::WatchFailed(kube::Error::Api(status))
                | watcher::Error::WatchError(status),
            ) => refusal(status),
            Err(_) => None,
        }
    }
}

type Events<K> = futures::stream::BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// A kube-runtime watcher over `api`, streaming or paged.
fn start<K>(api: &kube::Api<K>, streaming: bool) -> Events<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    kube::runtime::watcher(api.clone(), config(streaming)).boxed()
}

/// Where [`watch`] stands: the watcher it reads and, while `Auto` still streams, its judge.
struct Watching<K: 'static> {
    api: kube::Api<K>,
    inner: Events<K>,
    /// `Some` while `Auto` still asks for streaming lists.
    judge: Option<Judge>,
    /// When the streaming list under way has run out of patience.
    deadline: Option<tokio::time::Instant>,
}

impl<K> Watching<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    /// Replaces the streaming watch by a paged one, for good, and says why.
    fn fall_back(&mut self, why: Fallback) {
        tracing::warn!(
            kind = std::any::type_name::<K>(),
            reason = %why,
            "using paged lists instead of streaming lists"
        );
        self.judge = None;
        self.deadline = None;
        self.inner = start(&self.api, false);
    }
}

/// A kube-runtime watcher over `api` that gets its initial state as `how` says, falling back
/// from streaming to paged lists as the [module](self) describes. Like kube-runtime's
/// `watcher`, it never ends and passes errors on (give it a backoff); unlike it, a refusal of
/// streaming lists is not an error but the switch, logged once as a warning.
pub fn watch<K>(
    api: kube::Api<K>,
    how: InitialList,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let state = Watching {
        inner: start(&api, how != InitialList::Paged),
        judge: (how == InitialList::Auto).then(Judge::default),
        deadline: None,
        api,
    };
    futures::stream::unfold(state, move |mut s| async move {
        loop {
            let item = match s.deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, s.inner.next()).await {
                    Ok(item) => item,
                    Err(_) => {
                        s.fall_back(Fallback::TooSlow);
                        continue;
                    }
                },
                None => s.inner.next().await,
            }?;
            if let Some(judge) = s.judge.as_mut() {
                if let Some(why) = judge.observe(&item) {
                    s.fall_back(why);
                    continue;
                }
                s.deadline = match (&item, judge.listing()) {
                    (Ok(Event::Init), _) => Some(tokio::time::Instant::now() + PATIENCE),
                    (_, false) => None,
                    _ => s.deadline,
                };
            }
            return Some((item, s));
        }
    })
}

/// A kube-runtime `Controller` over every `K` of `api` whose watch gets its initial state as
/// `how` says ([`watch`]; `Controller::new` would always page). The controller backs its
/// watch off after errors itself.
pub fn controller<K>(api: kube::Api<K>, how: InitialList) -> kube::runtime::Controller<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::WatchStreamExt as _;
    let (reader, writer) = kube::runtime::reflector::store();
    let objects = watch(api, how).reflect(writer).applied_objects();
    kube::runtime::Controller::for_stream(objects, reader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    type Item = Result<Event<ConfigMap>, watcher::Error>;

    fn status(code: u16, reason: &str, message: &str) -> Box<kube::core::Status> {
        Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        })
    }

    fn refused(code: u16, message: &str) -> Item {
        Err(watcher::Error::WatchStartFailed(kube::Error::Api(status(
            code, "Invalid", message,
        ))))
    }

    #[test]
    fn a_refusal_falls_back_at_once_and_other_errors_pass() {
        let mut judge = Judge::default();
        let gate = "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled";
        for other in [
            refused(403, "deployments.apps is forbidden: User cannot watch"),
            refused(404, "the server could not find the requested resource"),
            refused(429, "too many requests"),
            refused(503, "unavailable"),
            Err(watcher::Error::NoResourceVersion),
        ] {
            assert_eq!(judge.observe(&other), None, "{other:?}");
        }
        assert_eq!(
            judge.observe(&refused(422, gate)),
            Some(Fallback::Refused {
                code: 422,
                message: gate.into()
            })
        );
        let old = "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch";
        assert!(matches!(
            Judge::default().observe(&refused(422, old)),
            Some(Fallback::Refused { code: 422, .. })
        ));
        assert!(matches!(
            Judge::default().observe(&refused(400, "bad request")),
            Some(Fallback::Refused { code: 400, .. })
        ));
        let in_stream: Item = Err(watcher::Error::WatchError(status(
            500,
            "InternalError",
            gate,
        )));
        assert!(
            matches!(
                Judge::default().observe(&in_stream),
                Some(Fallback::Refused { code: 500, .. })
            ),
            "an ERROR event that names sendInitialEvents is a refusal too"
        );
    }

    #[test]
    fn lists_cut_before_their_end_fall_back_after_the_limit_and_a_finished_one_resets() {
        let mut judge = Judge::default();
        let init: Item = Ok(Event::Init);
        let done: Item = Ok(Event::InitDone);
        let object: Item = Ok(Event::InitApply(ConfigMap::default()));
        for _ in 0..UNFINISHED_LIMIT {
            assert_eq!(judge.observe(&init), None);
            assert!(judge.listing());
            assert_eq!(judge.observe(&object), None);
        }
        assert_eq!(
            judge.observe(&done),
            None,
            "one finished: the count starts over"
        );
        assert!(!judge.listing());
        for _ in 0..UNFINISHED_LIMIT {
            assert_eq!(judge.observe(&init), None);
        }
        assert_eq!(judge.observe(&init), Some(Fallback::Unfinished));
    }

    #[test]
    fn each_mode_asks_for_what_it_names() {
        let streaming = config(true);
        let paged = config(false);
        assert_eq!(
            streaming.initial_list_strategy,
            watcher::InitialListStrategy::StreamingList
        );
        assert!(
            streaming.bookmarks,
            "the end of a streaming list is a bookmark"
        );
        assert_eq!(
            paged.initial_list_strategy,
            watcher::InitialListStrategy::ListWatch
        );
        assert_eq!(paged.page_size, Some(PAGE_SIZE));
    }
}
