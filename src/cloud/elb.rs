//! ELB v3 members and pools: the operations the agent needs, each a thin caller of the one request path.
//!
//! Discovery follows the reference: ListAllMembers cannot say which pool a member is in, so memberships
//! are found with ListPools (`member_address` / `member_instance_id`) and then ListMembers per pool,
//! following pages on both.

use std::net::IpAddr;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::Method;
use serde::Deserialize;

use super::{CloudError, Request, Service};
use crate::ids::{InstanceId, MemberId, PoolId, ProjectId};

/// How a DELETE ended, both of which mean "no longer in the pool".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// 404 naming the member: someone (Auto Scaling, an earlier run) already removed it.
    AlreadyGone,
}

/// A v3 member, the fields that matter here (unknown fields are ignored).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub address: String,
    pub protocol_port: u16,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub admin_state_up: Option<bool>,
    #[serde(default)]
    pub operating_status: Option<String>,
    #[serde(default)]
    pub status: Vec<ListenerStatus>,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub subnet_cidr_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ListenerStatus {
    #[serde(default)]
    pub listener_id: String,
    pub operating_status: String,
}

impl Member {
    /// Health as the load balancer sees it: per-listener status takes precedence where present; a member
    /// is only as healthy as its worst listener.
    pub fn health(&self) -> String {
        if !self.status.is_empty() {
            for bad in ["OFFLINE", "INITIAL", "UNKNOWN"] {
                if self.status.iter().any(|s| s.operating_status == bad) {
                    return bad.to_owned();
                }
            }
            return self.status[0].operating_status.clone();
        }
        self.operating_status
            .clone()
            .unwrap_or_else(|| "UNKNOWN".to_owned())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Pool {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub connection_drain: Option<ConnectionDrain>,
    #[serde(default)]
    pub member_deletion_protection_enable: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct ConnectionDrain {
    pub enable: bool,
    #[serde(default)]
    pub timeout: u64,
}

impl Pool {
    /// The load balancer's own drain timeout, when enabled.
    pub fn connection_drain_timeout(&self) -> Option<Duration> {
        self.connection_drain
            .filter(|d| d.enable && d.timeout > 0)
            .map(|d| Duration::from_secs(d.timeout))
    }
}

/// A member to create; `address` and `protocol_port` are required by the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMember {
    pub address: IpAddr,
    pub protocol_port: u16,
    pub subnet_cidr_id: Option<String>,
    pub weight: Option<u32>,
    pub name: Option<String>,
}

/// The fields of a member UpdateMember may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberUpdate {
    pub weight: Option<u32>,
    pub admin_state_up: Option<bool>,
    pub name: Option<String>,
}

/// Which resource a 404 says is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    Member,
    Pool,
    Unclear,
}

/// Reads a 404's message (`"Member <id> could not be found."`, `"Pool <id> ..."`): the IDs first, then
/// the resource word of an `ELB.8904`.
fn missing(e: &CloudError, pool: &PoolId, member: &MemberId) -> Missing {
    let text = e.message().unwrap_or_default().to_ascii_lowercase();
    if text.contains(member.as_str()) {
        return Missing::Member;
    }
    if text.contains(pool.as_str()) {
        return Missing::Pool;
    }
    if e.code() == Some("ELB.8904") {
        if text.starts_with("member") {
            return Missing::Member;
        }
        if text.starts_with("pool") {
            return Missing::Pool;
        }
    }
    Missing::Unclear
}

/// A membership found by discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub pool_id: PoolId,
    pub member_id: MemberId,
    pub address: IpAddr,
    pub protocol_port: u16,
    pub weight: Option<u32>,
    pub subnet_cidr_id: Option<String>,
    pub health: String,
}

#[derive(Deserialize)]
struct PageInfo {
    next_marker: Option<String>,
}

/// The most pages one listing may take. A pool's members or a project's pools fill a few pages even
/// one item a page; a server whose markers never run out (or run in a circle longer than the markers
/// remembered) is refused instead of listed for ever.
pub const MAX_PAGES: usize = 10_000;

#[derive(Deserialize)]
struct MembersPage {
    members: Vec<Member>,
    page_info: Option<PageInfo>,
}

#[derive(Deserialize)]
struct PoolsPage {
    pools: Vec<Pool>,
    page_info: Option<PageInfo>,
}

/// A page of a list answer: its items and its `page_info`.
trait Paged: serde::de::DeserializeOwned {
    type Item;
    fn into_parts(self) -> (Vec<Self::Item>, Option<PageInfo>);
}

impl Paged for MembersPage {
    type Item = Member;
    fn into_parts(self) -> (Vec<Member>, Option<PageInfo>) {
        (self.members, self.page_info)
    }
}

impl Paged for PoolsPage {
    type Item = Pool;
    fn into_parts(self) -> (Vec<Pool>, Option<PageInfo>) {
        (self.pools, self.page_info)
    }
}

#[derive(Deserialize)]
struct OnePool {
    pool: Pool,
}

#[derive(Deserialize)]
struct OneMember {
    member: Member,
}

/// The ELB v3 API of one project.
#[derive(Clone)]
pub struct Elb {
    service: Service,
    project: ProjectId,
    page_size: usize,
    max_pages: usize,
}

impl Elb {
    pub fn new(
        http: reqwest::Client,
        endpoint: reqwest::Url,
        project: ProjectId,
        credential: std::sync::Arc<dyn crate::credentials::Credential>,
        retry: super::RetryPolicy,
    ) -> Elb {
        Elb {
            service: Service::new(http, endpoint, credential, retry),
            project,
            page_size: 2000,
            max_pages: MAX_PAGES,
        }
    }

    /// Smaller pages (the API's maximum is 2000): for tests of paging.
    pub fn with_page_size(mut self, n: usize) -> Elb {
        self.page_size = n.clamp(1, 2000);
        self
    }

    /// A lower bound on a listing's pages than [`MAX_PAGES`]: for tests of a listing that never ends.
    pub fn with_max_pages(mut self, n: usize) -> Elb {
        self.max_pages = n.max(1);
        self
    }

    pub fn project_id(&self) -> &ProjectId {
        &self.project
    }

    fn path(&self, rest: &str) -> String {
        format!("/v3/{}/elb{rest}", self.project)
    }

    /// DeleteMember. 404 `ELB.8904` naming the member is success (already gone); naming the pool is a
    /// configuration error. A 404 naming neither (a bare `APIGW.0101` gateway 404) is checked with
    /// ShowPool before deciding: a pool that is there means the member is gone; a ShowPool that gets
    /// the gateway's 404 too means the API is not there (wrong endpoint or project), which must not
    /// pass for a member already gone nor be blamed on the pool.
    pub async fn delete_member(
        &self,
        pool: &PoolId,
        member: &MemberId,
    ) -> Result<DeleteOutcome, CloudError> {
        let op = format!("DeleteMember pool={pool} member={member}");
        let req = Request::new(
            &op,
            Method::DELETE,
            self.path(&format!("/pools/{pool}/members/{member}")),
        )
        .status_only();
        let refused = match self.service.send(&req).await {
            Ok(_) => return Ok(DeleteOutcome::Deleted),
            Err(e) if e.status() == Some(404) => e,
            Err(e) => return Err(e),
        };
        let pool_not_found = || CloudError::PoolNotFound {
            op: op.clone(),
            pool: pool.to_string(),
        };
        match missing(&refused, pool, member) {
            Missing::Member => return Ok(DeleteOutcome::AlreadyGone),
            Missing::Pool => return Err(pool_not_found()),
            Missing::Unclear => {}
        }
        tracing::warn!(%pool, %member, error = %refused, "DeleteMember: a 404 naming neither the member nor the pool; asking whether the pool exists");
        match self.show_pool(pool).await {
            Ok(_) => {}
            // ShowPool's `ELB.8904` can only be about the pool; another 404 (the gateway's
            // `APIGW.0101` again) says the API itself is not there: report the original answer.
            Err(e) if e.status() == Some(404) => {
                let pool_missing =
                    e.code() == Some("ELB.8904") || missing(&e, pool, member) == Missing::Pool;
                return Err(if pool_missing {
                    pool_not_found()
                } else {
                    refused
                });
            }
            Err(_) => return Err(refused),
        }
        // The pool is there and the route answered: the member is what is missing.
        Ok(DeleteOutcome::AlreadyGone)
    }

    pub async fn show_pool(&self, pool: &PoolId) -> Result<Pool, CloudError> {
        let op = format!("ShowPool pool={pool}");
        let req = Request::new(&op, Method::GET, self.path(&format!("/pools/{pool}")));
        self.service
            .send_then(&req, |reply| parse_pool(&op, &reply.body))
            .await
    }

    pub async fn show_member(
        &self,
        pool: &PoolId,
        member: &MemberId,
    ) -> Result<Member, CloudError> {
        let op = format!("ShowMember pool={pool} member={member}");
        let req = Request::new(
            &op,
            Method::GET,
            self.path(&format!("/pools/{pool}/members/{member}")),
        );
        self.member_reply(&req).await
    }

    /// CreateMember (201).
    pub async fn create_member(
        &self,
        pool: &PoolId,
        address: IpAddr,
        port: u16,
        subnet_cidr_id: Option<&str>,
        weight: Option<u32>,
    ) -> Result<Member, CloudError> {
        self.create(
            pool,
            &NewMember {
                address,
                protocol_port: port,
                subnet_cidr_id: subnet_cidr_id.map(str::to_owned),
                weight,
                name: None,
            },
        )
        .await
    }

    /// CreateMember (201), every optional field.
    pub async fn create(&self, pool: &PoolId, new: &NewMember) -> Result<Member, CloudError> {
        let op = format!(
            "CreateMember pool={pool} address={} port={}",
            new.address, new.protocol_port
        );
        let mut member = serde_json::json!({"address": new.address.to_string(), "protocol_port": new.protocol_port});
        if let Some(s) = &new.subnet_cidr_id {
            member["subnet_cidr_id"] = s.as_str().into();
        }
        if let Some(w) = new.weight {
            member["weight"] = w.into();
        }
        if let Some(n) = &new.name {
            member["name"] = n.as_str().into();
        }
        let req = Request::new(
            &op,
            Method::POST,
            self.path(&format!("/pools/{pool}/members")),
        )
        .json(&serde_json::json!({ "member": member }));
        self.member_reply(&req).await
    }

    /// Sends a request answered by one `{"member": ...}`.
    async fn member_reply(&self, req: &Request) -> Result<Member, CloudError> {
        self.service
            .send_then(req, |reply| parse_member(&req.op, &reply.body))
            .await
    }

    /// UpdateMember: the weight (0 stops new connections, keeps the membership).
    pub async fn update_weight(
        &self,
        pool: &PoolId,
        member: &MemberId,
        weight: u32,
    ) -> Result<Member, CloudError> {
        self.update_member(
            pool,
            member,
            &MemberUpdate {
                weight: Some(weight),
                ..MemberUpdate::default()
            },
        )
        .await
    }

    /// UpdateMember: only the fields given are sent.
    pub async fn update_member(
        &self,
        pool: &PoolId,
        member: &MemberId,
        update: &MemberUpdate,
    ) -> Result<Member, CloudError> {
        let mut op = format!("UpdateMember pool={pool} member={member}");
        let mut body = serde_json::Map::new();
        if let Some(w) = update.weight {
            op.push_str(&format!(" weight={w}"));
            body.insert("weight".into(), w.into());
        }
        if let Some(up) = update.admin_state_up {
            op.push_str(&format!(" admin_state_up={up}"));
            body.insert("admin_state_up".into(), up.into());
        }
        if let Some(n) = &update.name {
            body.insert("name".into(), n.as_str().into());
        }
        let req = Request::new(
            &op,
            Method::PUT,
            self.path(&format!("/pools/{pool}/members/{member}")),
        )
        .json(&serde_json::json!({ "member": body }));
        self.member_reply(&req).await
    }

    /// ListMembers with filters, every page.
    pub async fn list_members(
        &self,
        pool: &PoolId,
        filters: &[(&str, String)],
    ) -> Result<Vec<Member>, CloudError> {
        let op = format!("ListMembers pool={pool}");
        self.all_pages::<MembersPage>(&op, &self.path(&format!("/pools/{pool}/members")), filters)
            .await
    }

    /// ListPools with filters, every page.
    pub async fn list_pools(&self, filters: &[(&str, String)]) -> Result<Vec<Pool>, CloudError> {
        self.all_pages::<PoolsPage>("ListPools", &self.path("/pools"), filters)
            .await
    }

    /// Follows `limit`/`marker` paging to the last page: while a page names a `next_marker`, the next
    /// page is asked for, whatever the page's size. A gateway or region may serve fewer items than the
    /// `limit` asked (and than the documented maximum), so a short page is not the end; a missed page is
    /// a membership left in its pool. Paging ends on a page without a marker (or with an empty one), an
    /// empty page, or a marker seen before (a server going round in circles); one that never ends is
    /// refused after [`MAX_PAGES`] pages.
    async fn all_pages<P: Paged>(
        &self,
        op: &str,
        path: &str,
        filters: &[(&str, String)],
    ) -> Result<Vec<P::Item>, CloudError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..self.max_pages {
            let mut req = Request::new(op, Method::GET, path).query("limit", self.page_size);
            for (k, v) in filters {
                req = req.query(k, v);
            }
            if let Some(m) = &marker {
                req = req.query("marker", m);
            }
            let (items, next) = self
                .service
                .send_then(&req, |reply| parse_page::<P>(op, &reply.body))
                .await?;
            out.extend(items);
            match next {
                Some(m) if seen.insert(m.clone()) => marker = Some(m),
                Some(m) => {
                    tracing::warn!(op, marker = %m, pages = seen.len() + 1, "the API repeated a paging marker; taking that page as the last");
                    return Ok(out);
                }
                None => return Ok(out),
            }
        }
        Err(CloudError::Unending {
            op: op.to_owned(),
            pages: self.max_pages,
        })
    }

    /// Every membership of this server: the pools it is in, then its members in each (concurrently).
    pub async fn discover(
        &self,
        address: Option<IpAddr>,
        instance: Option<&InstanceId>,
        port: Option<u16>,
    ) -> Result<Vec<Found>, CloudError> {
        let filter = match (address, instance) {
            (Some(a), _) => ("member_address", a.to_string()),
            (None, Some(i)) => ("member_instance_id", i.to_string()),
            (None, None) => return Ok(Vec::new()),
        };
        let pools = self.list_pools(&[filter]).await?;
        let mut ids = Vec::new();
        for p in &pools {
            ids.push(PoolId::parse(&p.id).map_err(|e| CloudError::Decode {
                op: "ListPools".into(),
                reason: e.to_string(),
            })?);
        }
        let per_pool = join_all(
            ids.iter()
                .map(|id| self.discover_in_pool(id, address, instance, port)),
        )
        .await;
        let mut out = Vec::new();
        for found in per_pool {
            out.extend(found?);
        }
        Ok(out)
    }

    /// This server's members in one pool, by address (and port) or instance ID.
    pub async fn discover_in_pool(
        &self,
        pool: &PoolId,
        address: Option<IpAddr>,
        instance: Option<&InstanceId>,
        port: Option<u16>,
    ) -> Result<Vec<Found>, CloudError> {
        let mut filters = Vec::new();
        match (address, instance) {
            (Some(a), _) => filters.push(("address", a.to_string())),
            (None, Some(i)) => filters.push(("instance_id", i.to_string())),
            (None, None) => return Ok(Vec::new()),
        }
        if let Some(p) = port {
            filters.push(("protocol_port", p.to_string()));
        }
        let members = self.list_members(pool, &filters).await?;
        let op = format!("ListMembers pool={pool}");
        members
            .into_iter()
            // Filters are the server's promise; check them anyway, a wrong DELETE is not undoable.
            .filter(|m| address.is_none_or(|a| m.address.parse::<IpAddr>().ok() == Some(a)))
            .filter(|m| port.is_none_or(|p| m.protocol_port == p))
            .filter(|m| {
                address.is_some()
                    || instance.is_none_or(|i| {
                        m.instance_id
                            .as_deref()
                            .is_some_and(|x| x.eq_ignore_ascii_case(i.as_str()))
                    })
            })
            .map(|m| membership(pool, &op, &m))
            .collect()
    }
}

// The pure halves of the calls above: what the cloud's bytes mean, apart from getting them, so hostile
// answers can be fed straight in (tests/hostile_input.rs, fuzz/). Every error names the operation.

fn decode<T: serde::de::DeserializeOwned>(op: &str, body: &[u8]) -> Result<T, CloudError> {
    serde_json::from_slice(body).map_err(|e| CloudError::Decode {
        op: op.to_owned(),
        reason: e.to_string(),
    })
}

/// A `{"member": {...}}` answer (ShowMember, CreateMember, UpdateMember).
pub fn parse_member(op: &str, body: &[u8]) -> Result<Member, CloudError> {
    Ok(decode::<OneMember>(op, body)?.member)
}

/// A `{"pool": {...}}` answer (ShowPool).
pub fn parse_pool(op: &str, body: &[u8]) -> Result<Pool, CloudError> {
    Ok(decode::<OnePool>(op, body)?.pool)
}

fn parse_page<P: Paged>(
    op: &str,
    body: &[u8],
) -> Result<(Vec<P::Item>, Option<String>), CloudError> {
    let (items, info) = decode::<P>(op, body)?.into_parts();
    let next = next_marker(info, items.len());
    Ok((items, next))
}

/// A ListMembers page: its members and the marker of the next page (`None` on the last).
pub fn parse_members_page(
    op: &str,
    body: &[u8],
) -> Result<(Vec<Member>, Option<String>), CloudError> {
    parse_page::<MembersPage>(op, body)
}

/// A ListPools page, as [`parse_members_page`].
pub fn parse_pools_page(op: &str, body: &[u8]) -> Result<(Vec<Pool>, Option<String>), CloudError> {
    parse_page::<PoolsPage>(op, body)
}

/// A listed member as a membership of `pool`: its ID and address must be what they claim to be, since
/// a DELETE is sent with them.
pub fn membership(pool: &PoolId, op: &str, m: &Member) -> Result<Found, CloudError> {
    let decode = |reason: String| CloudError::Decode {
        op: op.to_owned(),
        reason,
    };
    Ok(Found {
        pool_id: pool.clone(),
        member_id: MemberId::parse(&m.id).map_err(|e| decode(e.to_string()))?,
        address: m
            .address
            .parse()
            .map_err(|_| decode(format!("member address {:?}", m.address)))?,
        protocol_port: m.protocol_port,
        weight: m.weight,
        subnet_cidr_id: m.subnet_cidr_id.clone().filter(|s| !s.is_empty()),
        health: m.health(),
    })
}

/// The marker for the next page, or `None` on the last page: no `next_marker`, an empty one, or a page
/// with nothing on it. The page's size says nothing: a server may cap pages below the `limit` asked,
/// and its `current_count` is not read.
fn next_marker(info: Option<PageInfo>, got: usize) -> Option<String> {
    if got == 0 {
        return None;
    }
    info?.next_marker.filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(next: Option<&str>) -> Option<PageInfo> {
        Some(PageInfo {
            next_marker: next.map(str::to_owned),
        })
    }

    #[test]
    fn paging_follows_the_marker_whatever_the_page_size() {
        // The page size never enters: a page of 1 against a limit of 2000 names its next page.
        assert_eq!(next_marker(info(Some("m")), 1), Some("m".into()));
        assert_eq!(next_marker(info(Some("m")), 2000), Some("m".into()));
        assert_eq!(next_marker(info(None), 2), None);
        assert_eq!(next_marker(info(Some("")), 2), None);
        assert_eq!(
            next_marker(info(Some("m")), 0),
            None,
            "an empty page is the last"
        );
        assert_eq!(next_marker(None, 2), None);
    }

    fn not_found(code: &str, msg: &str) -> CloudError {
        CloudError::Api {
            op: "DeleteMember".into(),
            status: 404,
            code: Some(code.into()),
            message: Some(msg.into()),
            request_id: None,
        }
    }

    #[test]
    fn a_404_is_read_for_which_resource_is_missing() {
        let pool = PoolId::parse("36ce7086-a496-4666-9064-5ba0e6840c75").unwrap();
        let member = MemberId::parse("1923923e-fe8a-484f-bdbc-e11559b1f48f").unwrap();
        let m = |code, msg| missing(&not_found(code, msg), &pool, &member);
        assert_eq!(
            m(
                "ELB.8904",
                "Member 1923923e-fe8a-484f-bdbc-e11559b1f48f could not be found."
            ),
            Missing::Member
        );
        assert_eq!(
            m(
                "ELB.8904",
                "Pool 36CE7086-A496-4666-9064-5BA0E6840C75 could not be found."
            ),
            Missing::Pool
        );
        assert_eq!(m("ELB.8904", "Member could not be found."), Missing::Member);
        assert_eq!(m("ELB.8904", "Pool could not be found."), Missing::Pool);
        assert_eq!(
            m(
                "APIGW.0101",
                "The API does not exist or has not been published in the environment"
            ),
            Missing::Unclear
        );
        assert_eq!(
            m("ELB.8904", "Resource could not be found."),
            Missing::Unclear
        );
        // Only an ELB.8904 is trusted for its first word.
        assert_eq!(m("APIGW.0101", "Pool routing failed"), Missing::Unclear);
    }

    #[test]
    fn per_listener_status_takes_precedence() {
        let mut m: Member = serde_json::from_value(serde_json::json!({
            "id": "x", "address": "10.0.0.1", "protocol_port": 80, "operating_status": "ONLINE",
            "status": [{"listener_id": "a", "operating_status": "ONLINE"}, {"listener_id": "b", "operating_status": "OFFLINE"}],
            "pool_id_is_not_a_v3_field": true
        }))
        .unwrap();
        assert_eq!(m.health(), "OFFLINE");
        m.status.clear();
        assert_eq!(m.health(), "ONLINE");
    }

    #[test]
    fn connection_drain_only_counts_when_enabled() {
        let pool = |v: serde_json::Value| serde_json::from_value::<Pool>(v).unwrap();
        assert_eq!(
            pool(
                serde_json::json!({"id": "p", "connection_drain": {"enable": true, "timeout": 30}})
            )
            .connection_drain_timeout(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            pool(
                serde_json::json!({"id": "p", "connection_drain": {"enable": false, "timeout": 30}})
            )
            .connection_drain_timeout(),
            None
        );
        assert_eq!(
            pool(serde_json::json!({"id": "p"})).connection_drain_timeout(),
            None
        );
    }
}
