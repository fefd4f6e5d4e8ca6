//! Placeholder interface of the census (the real module lands from the census branch).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count {
    pub established: usize,
    pub arrived: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Netlink,
    Procfs,
}

#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("census: {0}")]
    Other(String),
}

pub trait Census: Send {
    fn count(&mut self) -> Result<Count, CensusError>;
    fn backend(&self) -> Backend;
}
