//! Which namespaces the operator watches (`--watch-namespaces`), and the watch streams over
//! them: every namespace (one cluster-wide watch per kind, the cluster-wide install) or the
//! listed ones (one watch per namespace and kind, the namespaced install, whose RBAC grants
//! nothing outside them). Either way the controller sees one stream and one cache per kind.

use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;

/// The namespaces the operator watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    All,
    /// These namespaces only (sorted, distinct, never empty).
    Namespaces(Vec<String>),
}

impl Scope {
    /// The listed namespaces (blank entries ignored); none listed means every namespace.
    pub fn new<S: AsRef<str>>(namespaces: impl IntoIterator<Item = S>) -> Scope {
        let mut list: Vec<String> = namespaces
            .into_iter()
            .map(|n| n.as_ref().trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        list.sort();
        list.dedup();
        if list.is_empty() {
            Scope::All
        } else {
            Scope::Namespaces(list)
        }
    }

    /// One namespace (the integration tests run one operator per namespace).
    pub fn namespace(ns: &str) -> Scope {
        Scope::new([ns])
    }

    /// Whether namespace `ns` is served.
    pub fn contains(&self, ns: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespaces(list) => list.iter().any(|n| n == ns),
        }
    }

    /// An Api of `K` per watched namespace, or one across all namespaces.
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::All => vec![Api::all(client.clone())],
            Scope::Namespaces(list) => list
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => f.write_str("all namespaces"),
            Scope::Namespaces(list) => write!(f, "namespaces {}", list.join(",")),
        }
    }
}

type WatchItem<K> = Result<Event<K>, watcher::Error>;

/// A namespaced kind the operator watches (its Models, ModelEndpoints, Deployments, Pods).
pub trait Watched:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + 'static
{
}

/// The watch events of `K` in `scope`, as one watch's: what a single reflector store (the
/// controller's cache) reads. Several namespaces' watches are merged by [`Merge`].
pub fn watch<K>(
    scope: &Scope,
    client: &Client,
    config: watcher::Config,
) -> BoxStream<'static, WatchItem<K>>
where
    K: Watched,
{
    let apis = scope.apis::<K>(client);
    let sources = apis.len();
    let each = apis.into_iter().enumerate().map(|(i, api)| {
        watcher(api, config.clone())
            .default_backoff()
            .map(move |e| (i, e))
            .boxed()
    });
    stream::select_all(each)
        .scan(Merge::new(sources), |merge, (i, item)| {
            let out: Vec<WatchItem<K>> = match item {
                Ok(event) => merge.on(i, event).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::future::ready(Some(stream::iter(out)))
        })
        .flatten()
        .boxed()
}

/// The objects of `K` in `scope` that change (for `owns`/`watches` triggers: no cache).
pub fn touched<K>(
    scope: &Scope,
    client: &Client,
    config: watcher::Config,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Watched,
{
    stream::select_all(
        scope
            .apis::<K>(client)
            .into_iter()
            .map(|api| watcher(api, config.clone()).touched_objects().boxed()),
    )
}

/// `(namespace, name)` of an object.
type Key = (Option<String>, String);

fn key<K: Resource>(o: &K) -> Key {
    let m = o.meta();
    (m.namespace.clone(), m.name.clone().unwrap_or_default())
}

/// Several watches' events as one watch's. A reflector store resets on every `Init` and takes
/// the listed objects on `InitDone`: interleaved, one namespace's (re)list would drop the
/// others'. So: the first `Init`..`InitDone` comes once every source has listed, with all
/// their objects; a later relist of one source becomes `Delete`s of what it no longer has and
/// `Apply`s of what it has.
#[derive(Debug)]
pub struct Merge<K> {
    /// Each source's objects, as last seen.
    objects: Vec<BTreeMap<Key, K>>,
    /// A source's (re)list in progress.
    listing: Vec<Option<BTreeMap<Key, K>>>,
    listed: Vec<bool>,
    started: bool,
}

impl<K: Resource + Clone> Merge<K> {
    pub fn new(sources: usize) -> Self {
        Merge {
            objects: vec![BTreeMap::new(); sources],
            listing: vec![None; sources],
            listed: vec![false; sources],
            started: false,
        }
    }

    /// What the store reads for `event` of source `source`.
    pub fn on(&mut self, source: usize, event: Event<K>) -> Vec<Event<K>> {
        if source >= self.objects.len() {
            return Vec::new();
        }
        match event {
            Event::Init => {
                self.listing[source] = Some(BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(o) => {
                self.listing[source]
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&o), o);
                Vec::new()
            }
            Event::InitDone => self.listed(source),
            Event::Apply(o) => {
                self.objects[source].insert(key(&o), o.clone());
                self.pass(Event::Apply(o))
            }
            Event::Delete(o) => {
                self.objects[source].remove(&key(&o));
                self.pass(Event::Delete(o))
            }
        }
    }

    fn pass(&self, event: Event<K>) -> Vec<Event<K>> {
        if self.started {
            vec![event]
        } else {
            Vec::new()
        }
    }

    /// Source `source` finished a (re)list.
    fn listed(&mut self, source: usize) -> Vec<Event<K>> {
        let new = self.listing[source].take().unwrap_or_default();
        let old = std::mem::replace(&mut self.objects[source], new);
        self.listed[source] = true;
        if self.started {
            let gone = old
                .into_iter()
                .filter(|(k, _)| !self.objects[source].contains_key(k))
                .map(|(_, o)| Event::Delete(o));
            let have = self.objects[source].values().cloned().map(Event::Apply);
            return gone.chain(have).collect();
        }
        if !self.listed.iter().all(|l| *l) {
            return Vec::new();
        }
        self.started = true;
        let all = self
            .objects
            .iter()
            .flat_map(|m| m.values().cloned())
            .map(Event::InitApply);
        std::iter::once(Event::Init)
            .chain(all)
            .chain(std::iter::once(Event::InitDone))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Feed events into a real reflector store; return its `(namespace, name)`s and readiness.
    fn store_after(events: Vec<(usize, Event<ConfigMap>)>, sources: usize) -> (Vec<Key>, bool) {
        let (reader, mut writer) = reflector::store::<ConfigMap>();
        let mut merge = Merge::new(sources);
        let mut ready = false;
        for (i, e) in events {
            for out in merge.on(i, e) {
                ready |= matches!(out, Event::InitDone);
                writer.apply_watcher_event(&out);
            }
        }
        let mut keys: Vec<Key> = reader.state().iter().map(|o| key(o.as_ref())).collect();
        keys.sort();
        (keys, ready)
    }

    fn k(ns: &str, name: &str) -> Key {
        (Some(ns.into()), name.into())
    }

    #[test]
    fn the_store_is_ready_once_every_namespace_has_listed_and_holds_them_all() {
        let a_listed = vec![
            (0, Event::Init),
            (0, Event::InitApply(cm("a", "x"))),
            (0, Event::InitDone),
            // A change in `a` while `b` still lists is kept for the first full list.
            (0, Event::Apply(cm("a", "y"))),
            (1, Event::Init),
            (1, Event::InitApply(cm("b", "z"))),
        ];
        let (keys, ready) = store_after(a_listed.clone(), 2);
        assert!(!ready && keys.is_empty(), "{keys:?}");
        let mut all = a_listed;
        all.push((1, Event::InitDone));
        let (keys, ready) = store_after(all, 2);
        assert!(ready);
        assert_eq!(keys, vec![k("a", "x"), k("a", "y"), k("b", "z")]);
    }

    #[test]
    fn one_namespace_relisting_keeps_the_others_and_drops_what_it_lost() {
        let events = vec![
            (0, Event::Init),
            (0, Event::InitApply(cm("a", "x"))),
            (0, Event::InitApply(cm("a", "gone"))),
            (0, Event::InitDone),
            (1, Event::Init),
            (1, Event::InitApply(cm("b", "z"))),
            (1, Event::InitDone),
            (1, Event::Delete(cm("b", "z"))),
            (1, Event::Apply(cm("b", "w"))),
            // `a` relists (its watch expired): `gone` was deleted meanwhile.
            (0, Event::Init),
            (0, Event::InitApply(cm("a", "x"))),
            (0, Event::InitApply(cm("a", "new"))),
            (0, Event::InitDone),
        ];
        let (keys, _) = store_after(events, 2);
        assert_eq!(keys, vec![k("a", "new"), k("a", "x"), k("b", "w")]);
    }

    #[test]
    fn one_source_behaves_like_a_plain_watch() {
        let events = vec![
            (0, Event::Init),
            (0, Event::InitApply(cm("a", "x"))),
            (0, Event::InitDone),
            (0, Event::Apply(cm("a", "y"))),
            (0, Event::Delete(cm("a", "x"))),
            (7, Event::Apply(cm("a", "from-nowhere"))),
        ];
        let (keys, ready) = store_after(events, 1);
        assert!(ready);
        assert_eq!(keys, vec![k("a", "y")]);
    }

    #[test]
    fn a_scope_lists_namespaces_once_and_blank_means_all() {
        assert_eq!(
            Scope::new([" b", "a", "", "b"]),
            Scope::Namespaces(vec!["a".into(), "b".into()])
        );
        assert_eq!(Scope::new(Vec::<String>::new()), Scope::All);
        assert_eq!(Scope::new([" "]), Scope::All);
        assert_eq!(Scope::namespace("x").to_string(), "namespaces x");
    }
}
