//! A complete wasmtime host for the tokenwarden component: wasi:http behind the egress
//! allow-list, the `secrets` and `signing` capabilities over an in-memory store, one
//! `refresh` call.
use tokenwarden::action::{ClientAuth, Request, SigningAlg};
use tokenwarden::emulator::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_TENANT, Emulator};
use tokenwarden::{BUILTIN_COMPONENT, EgressPolicy, MemoryStore, Origin, Refresher, SecretStore};
use tokenwarden::{SecretRoles, SecretsCtx, SigningCtx, secrets, signing};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    egress: EgressPolicy,
    table: ResourceTable,
    secrets: SecretsCtx,
    signing: SigningCtx,
}
impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.egress }
    }
}

#[tokio::main]
async fn main() -> wasmtime::Result<()> {
    let idp = Emulator::start(([127, 0, 0, 1], 0).into(), Default::default()).await?;
    let store = std::sync::Arc::new(MemoryStore::default());
    store.set("client-id", &DEMO_CLIENT_ID.into(), None).await?;
    store.set("client-secret", &DEMO_CLIENT_SECRET.into(), None).await?;
    store.set("tenant-id", &DEMO_TENANT.into(), None).await?;
    let engine = wasmtime::Engine::default();
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    secrets::add_to_linker(&mut linker, |host| &mut host.secrets)?;
    signing::add_to_linker(&mut linker, |host| &mut host.signing)?;
    let component = Component::new(&engine, BUILTIN_COMPONENT)?;

    // A store per run; SecretRoles::default() grants the four roles under their own names.
    let origin = Origin::parse(&idp.authority()).map_err(wasmtime::Error::msg)?;
    let host = Host {
        wasi: WasiCtx::builder().build(),
        http: WasiHttpCtx::new(),
        egress: EgressPolicy::allow(vec![origin]),
        table: ResourceTable::new(),
        secrets: SecretsCtx::new(&SecretRoles::default(), store.clone()),
        signing: SigningCtx::new(&SecretRoles::default(), store.clone()),
    };
    let mut run = wasmtime::Store::new(&engine, host);
    let refresher = Refresher::instantiate_async(&mut run, &component, &linker).await?;
    let scope = "https://graph.microsoft.com/.default".into();
    let (authority, client_auth) = (Some(idp.authority()), ClientAuth::ClientSecretPost);
    let (signing_alg, key_id) = (SigningAlg::Ps256, None); // for `private-key-jwt` only
    let request = Request {
        scope,
        authority,
        token_url: None,
        client_auth,
        extra_params: vec![],
        signing_alg,
        key_id,
    };
    let outcome = refresher.tokenwarden_refresh_action().call_refresh(&mut run, &request).await??;
    assert!(store.get("access-token").await?.is_some(), "the component stored its token");
    println!("stored a {} token, expires at {:?}", outcome.token_type, outcome.expires_at);
    Ok(())
}
