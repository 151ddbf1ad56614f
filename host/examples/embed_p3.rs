//! `embed.rs` for the WASI 0.3 world (experimental in wasmtime 48: see SECURITY.md): the
//! engine runs component-model concurrency, the linker adds 0.3's clocks, randomness and HTTP, and the
//! `async func` export is called inside `run_concurrent`.
use tokenwarden::async_action::{ClientAuth, Request, SigningAlg};
use tokenwarden::emulator::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_TENANT, Emulator};
use tokenwarden::{BUILTIN_COMPONENT_P3, EgressPolicy, MemoryStore, Origin, RefresherP3};
use tokenwarden::{SecretRoles, SecretStore, SecretsCtx, SigningCtx, secrets, signing};
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
    let mut config = wasmtime::Config::new();
    config.wasm_component_model_async(true);
    let engine = wasmtime::Engine::new(&config)?;
    let mut linker = Linker::<Host>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?; // the Rust std's own imports
    wasmtime_wasi::p3::clocks::add_to_linker(&mut linker)?;
    wasmtime_wasi::p3::random::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    secrets::add_to_linker(&mut linker, |host| &mut host.secrets)?;
    signing::add_to_linker(&mut linker, |host| &mut host.signing)?;
    let component = Component::new(&engine, BUILTIN_COMPONENT_P3)?;

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
    let refresher = RefresherP3::instantiate_async(&mut run, &component, &linker).await?;
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
    let action = refresher.tokenwarden_refresh_async_action();
    let outcome = run.run_concurrent(async |a| action.call_refresh(a, request).await).await???;
    assert!(store.get("access-token").await?.is_some(), "the component stored its token");
    println!("stored a {} token, expires at {:?}", outcome.token_type, outcome.expires_at);
    Ok(())
}
