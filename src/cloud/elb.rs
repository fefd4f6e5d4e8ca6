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

/// A membership found by discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub pool_id: PoolId,
    pub member_id: MemberId,
    pub address: IpAddr,
    pub protocol_port: u16,
    pub weight: Option<u32>,
    pub health: String,
}

#[derive(Deserialize)]
struct PageInfo {
    next_marker: Option<String>,
    #[serde(default)]
    current_count: usize,
}

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
        }
    }

    /// Smaller pages (the API's maximum is 2000): for tests of paging.
    pub fn with_page_size(mut self, n: usize) -> Elb {
        self.page_size = n.clamp(1, 2000);
        self
    }

    pub fn project_id(&self) -> &ProjectId {
        &self.project
    }

    fn path(&self, rest: &str) -> String {
        format!("/v3/{}/elb{rest}", self.project)
    }

    /// DeleteMember. 404 `ELB.8904` naming the member is success (already gone); naming the pool is a
    /// configuration error. A bare gateway 404 (`APIGW.0101`) is checked with ShowPool before deciding.
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
        );
        match self.service.send(&req).await {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(CloudError::Api {
                status: 404,
                code,
                message,
                request_id,
                ..
            }) => {
                let text = message.clone().unwrap_or_default().to_ascii_lowercase();
                if text.contains(member.as_str()) || text.starts_with("member") {
                    return Ok(DeleteOutcome::AlreadyGone);
                }
                if text.contains(pool.as_str()) || text.starts_with("pool") {
                    return Err(CloudError::PoolNotFound {
                        op,
                        pool: pool.to_string(),
                    });
                }
                // Ambiguous: ask whether the pool exists.
                match self.show_pool(pool).await {
                    Ok(_) => Ok(DeleteOutcome::AlreadyGone),
                    Err(CloudError::Api { status: 404, .. }) => Err(CloudError::PoolNotFound {
                        op,
                        pool: pool.to_string(),
                    }),
                    Err(_) => Err(CloudError::Api {
                        op,
                        status: 404,
                        code,
                        message,
                        request_id,
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub async fn show_pool(&self, pool: &PoolId) -> Result<Pool, CloudError> {
        let op = format!("ShowPool pool={pool}");
        let reply = self
            .service
            .send(&Request::new(
                &op,
                Method::GET,
                self.path(&format!("/pools/{pool}")),
            ))
            .await?;
        Ok(reply.json::<OnePool>(&op)?.pool)
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
        Ok(self
            .service
            .send(&req)
            .await?
            .json::<OneMember>(&op)?
            .member)
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
        let op = format!("CreateMember pool={pool} address={address} port={port}");
        let mut member = serde_json::json!({"address": address.to_string(), "protocol_port": port});
        if let Some(s) = subnet_cidr_id {
            member["subnet_cidr_id"] = s.into();
        }
        if let Some(w) = weight {
            member["weight"] = w.into();
        }
        let req = Request::new(
            &op,
            Method::POST,
            self.path(&format!("/pools/{pool}/members")),
        )
        .json(&serde_json::json!({ "member": member }));
        Ok(self
            .service
            .send(&req)
            .await?
            .json::<OneMember>(&op)?
            .member)
    }

    /// UpdateMember: the weight (0 stops new connections, keeps the membership).
    pub async fn update_weight(
        &self,
        pool: &PoolId,
        member: &MemberId,
        weight: u32,
    ) -> Result<Member, CloudError> {
        let op = format!("UpdateMember pool={pool} member={member} weight={weight}");
        let req = Request::new(
            &op,
            Method::PUT,
            self.path(&format!("/pools/{pool}/members/{member}")),
        )
        .json(&serde_json::json!({"member": {"weight": weight}}));
        Ok(self
            .service
            .send(&req)
            .await?
            .json::<OneMember>(&op)?
            .member)
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

    /// Follows `limit`/`marker` paging to the last page.
    async fn all_pages<P: Paged>(
        &self,
        op: &str,
        path: &str,
        filters: &[(&str, String)],
    ) -> Result<Vec<P::Item>, CloudError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut req = Request::new(op, Method::GET, path).query("limit", self.page_size);
            for (k, v) in filters {
                req = req.query(k, v);
            }
            if let Some(m) = &marker {
                req = req.query("marker", m);
            }
            let (items, info) = self.service.send(&req).await?.json::<P>(op)?.into_parts();
            let n = items.len();
            out.extend(items);
            match next_marker(info, n, self.page_size) {
                // A server repeating its marker would loop forever: that page was the last.
                Some(m) if marker.as_deref() != Some(m.as_str()) => marker = Some(m),
                _ => return Ok(out),
            }
        }
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
            .map(|m| {
                let decode = |reason: String| CloudError::Decode {
                    op: op.clone(),
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
                    health: m.health(),
                })
            })
            .collect()
    }
}

/// The marker for the next page, or `None` on the last page (no `next_marker`, or a short page).
fn next_marker(info: Option<PageInfo>, got: usize, limit: usize) -> Option<String> {
    let info = info?;
    if got < limit || info.current_count < limit && info.current_count != got {
        return None;
    }
    info.next_marker.filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(next: Option<&str>, count: usize) -> Option<PageInfo> {
        Some(PageInfo {
            next_marker: next.map(str::to_owned),
            current_count: count,
        })
    }

    #[test]
    fn paging_stops_on_the_last_page() {
        assert_eq!(next_marker(info(Some("m"), 2), 2, 2), Some("m".into()));
        assert_eq!(next_marker(info(None, 2), 2, 2), None);
        assert_eq!(
            next_marker(info(Some("m"), 1), 1, 2),
            None,
            "a short page is the last"
        );
        assert_eq!(next_marker(None, 2, 2), None);
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
