//! Callers' limits over loopback: a caller's rate, overload shed at once, watches' own limit,
//! one caller's share of the places, and a stalled request message giving its place back. Each
//! refusal is checked to reach no upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::callers::{
    BILLING_TOKEN, OPS_TOKEN, UPGRADE, call, callers_toml, gateway, validate_only, watch_request,
    with_token,
};
use common::{assert_error, eventually, request, wait_until};
use dds_gateway::pb;
use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use dds_gateway::testing::sandbox::Fault;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_over_its_rate_is_resource_exhausted_and_others_are_not() {
    // A refill so slow that no token comes back during the test.
    let callers = callers_toml().replacen(
        "engine_versions = [\"5.0\", \"6.0\"]",
        "engine_versions = [\"5.0\", \"6.0\"]\nrate_per_second = 0.001\nburst = 2",
        1,
    );
    let gw = gateway("", &callers).await;
    for _ in 0..2 {
        call(
            &gw.client,
            with_token(validate_only("dds-sandbox01", "5.0"), BILLING_TOKEN),
        )
        .await
        .unwrap();
    }
    let limited = call(
        &gw.client,
        with_token(request("dds-sandbox01", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap_err();
    let metadata = assert_error(&limited, Code::ResourceExhausted, "CALLER_RATE_LIMITED");
    assert_eq!(metadata["caller"], "billing");
    let delay = limited
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(delay > Duration::from_secs(60), "{delay:?}");
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);

    // Keyed by caller, not by connection: the other caller on the same channel is unaffected.
    let other = pb::UpgradeEngineVersionRequest {
        region_id: "cn-shenzhen".into(),
        ..validate_only("dds-sandboxsz", "7.0")
    };
    call(&gw.client, with_token(other, OPS_TOKEN))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_is_shed_at_once_and_calls_in_flight_finish() {
    let gw = gateway(
        "max_in_flight = 2\nmax_in_flight_per_caller = 2",
        &callers_toml(),
    )
    .await;
    for _ in 0..2 {
        gw.sandbox
            .push_fault_on(UPGRADE, Fault::Delay(Duration::from_secs(3)));
    }
    let in_flight: Vec<_> = ["dds-sandbox01", "dds-sandbox02"]
        .into_iter()
        .map(|id| {
            let client = gw.client.clone();
            tokio::spawn(async move {
                call(&client, with_token(request(id, "5.0"), BILLING_TOKEN)).await
            })
        })
        .collect();
    let sandbox = &gw.sandbox;
    wait_until("both calls reach the upstream", || {
        sandbox.calls(UPGRADE) == 2
    })
    .await;

    let shed = call(
        &gw.client,
        with_token(request("dds-sandbox03", "6.0"), BILLING_TOKEN),
    )
    .await
    .unwrap_err();
    assert_error(&shed, Code::Unavailable, "GATEWAY_OVERLOADED");
    assert!(shed.get_details_retry_info().is_some());
    assert_eq!(
        gw.sandbox.calls(UPGRADE),
        2,
        "the shed call never went upstream"
    );

    for call in in_flight {
        assert!(call.await.unwrap().is_ok());
    }
    // With room again, the next call is served.
    call(
        &gw.client,
        with_token(validate_only("dds-sandbox03", "6.0"), BILLING_TOKEN),
    )
    .await
    .unwrap();
}

/// A caller that sends its headers and then never finishes its message would hold a place among
/// the calls in flight for as long as it likes; the message must arrive in time.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_message_gives_its_place_back() {
    let gw = gateway(
        "max_in_flight = 1\nrequest_timeout = \"1s\"",
        &callers_toml(),
    )
    .await;
    // Headers go out at once; the message never comes (and no grpc-timeout is sent).
    let stall = || {
        let addr = gw.addr;
        tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(common::channel(addr).await);
            grpc.ready().await.unwrap();
            grpc.client_streaming::<_, _, pb::UpgradeEngineVersionResponse, _>(
                with_token(
                    tokio_stream::pending::<pb::UpgradeEngineVersionRequest>(),
                    BILLING_TOKEN,
                ),
                http::uri::PathAndQuery::from_static(
                    "/dds.gateway.v1.EngineVersionService/UpgradeEngineVersion",
                ),
                tonic_prost::ProstCodec::default(),
            )
            .await
        })
    };
    // Wait until the stalled call holds the only place, i.e. a probe is shed. A probe that is in
    // flight when the stalled call arrives sheds *it* instead: then start another one (and only
    // then: a stalled call still connecting must be given the chance to get in). The bound is
    // generous because under a loaded machine the two can keep colliding for a while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut stalled = stall();
    loop {
        if stalled.is_finished() {
            stalled = stall();
        }
        let probe = call(
            &gw.client,
            with_token(validate_only("dds-sandbox01", "5.0"), BILLING_TOKEN),
        )
        .await;
        if probe.is_err_and(|s| s.code() == Code::Unavailable) && !stalled.is_finished() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled call never held the place"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A guard against hanging forever, not a timing assumption: the limit is 1 s.
    let status = tokio::time::timeout(Duration::from_secs(30), stalled)
        .await
        .expect("the stalled call is answered")
        .unwrap()
        .unwrap_err();
    assert_error(&status, Code::DeadlineExceeded, "REQUEST_INCOMPLETE");
    call(
        &gw.client,
        with_token(validate_only("dds-sandbox01", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap();
    assert!(gw.sandbox.calls(UPGRADE) == 0);
}

/// Watches last up to `watch.max_duration` (an hour by default) and poll Alibaba all along, so
/// they have a limit of their own: they must not hold `server.max_in_flight` places (that would
/// starve upgrades), nor be unbounded (that would spend the gateway's Alibaba quota).
#[tokio::test(flavor = "multi_thread")]
async fn watches_have_their_own_limit_and_leave_room_for_calls() {
    let gw = gateway(
        "max_in_flight = 1\n[watch]\nmax_active = 2\nmax_active_per_caller = 2\npoll_interval = \"50ms\"",
        &callers_toml(),
    )
    .await;
    let mut client = gw.client.clone();
    let open = |client: &mut EngineVersionServiceClient<Channel>| {
        let mut client = client.clone();
        async move {
            client
                .watch_upgrade(with_token(
                    watch_request("dds-sandbox02", "8.0"),
                    BILLING_TOKEN,
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let mut first = open(&mut client).await.unwrap();
    let _second = open(&mut client).await.unwrap();
    // Both watches are running (each has sent its first state).
    assert!(first.message().await.unwrap().is_some());

    let refused = open(&mut client).await.unwrap_err();
    let _ = assert_error(&refused, Code::ResourceExhausted, "WATCH_LIMIT_REACHED");
    assert!(refused.get_details_retry_info().is_some());

    // The running watches hold no place among the calls in flight.
    call(
        &gw.client,
        with_token(validate_only("dds-sandbox01", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap();

    // A watch that ends gives its place back.
    drop(first);
    eventually("a new watch is accepted", || {
        let mut client = client.clone();
        async move { open(&mut client).await.is_ok() }
    })
    .await;
    assert_eq!(gw.sandbox.calls(UPGRADE), 0);
}

/// A caller within its rate may still hold only its share of the places: with
/// `max_in_flight_per_caller` and `max_active_per_caller` at 1 of 2, a second call or watch of
/// the same caller is refused with the usual reasons while another caller is still served.
#[tokio::test(flavor = "multi_thread")]
async fn one_caller_cannot_hold_every_place() {
    let gw = gateway(
        "max_in_flight = 2\nmax_in_flight_per_caller = 1\n[watch]\nmax_active = 2\nmax_active_per_caller = 1\npoll_interval = \"50ms\"",
        &callers_toml(),
    )
    .await;
    gw.sandbox
        .push_fault_on(UPGRADE, Fault::Delay(Duration::from_secs(3)));
    let held = {
        let client = gw.client.clone();
        tokio::spawn(async move {
            call(
                &client,
                with_token(request("dds-sandbox01", "5.0"), BILLING_TOKEN),
            )
            .await
        })
    };
    let sandbox = &gw.sandbox;
    wait_until("billing's upgrade reaches the upstream", || {
        sandbox.calls(UPGRADE) == 1
    })
    .await;
    // A place is free, but not for billing.
    let refused = call(
        &gw.client,
        with_token(validate_only("dds-sandbox02", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap_err();
    assert_error(&refused, Code::Unavailable, "GATEWAY_OVERLOADED");
    assert!(refused.get_details_retry_info().is_some());
    // Another caller takes it.
    let ops = pb::UpgradeEngineVersionRequest {
        region_id: "cn-shenzhen".into(),
        ..validate_only("dds-sandboxsz", "7.0")
    };
    call(&gw.client, with_token(ops, OPS_TOKEN)).await.unwrap();
    assert!(held.await.unwrap().is_ok());
    // Back under its share, billing is served again.
    call(
        &gw.client,
        with_token(validate_only("dds-sandbox02", "5.0"), BILLING_TOKEN),
    )
    .await
    .unwrap();

    // Watches: one for billing, and not a second, while ops still gets one.
    let mut client = gw.client.clone();
    let mut first = client
        .watch_upgrade(with_token(
            watch_request("dds-sandbox02", "8.0"),
            BILLING_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(first.message().await.unwrap().is_some());
    let refused = client
        .watch_upgrade(with_token(
            watch_request("dds-sandbox03", "8.0"),
            BILLING_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_error(&refused, Code::ResourceExhausted, "WATCH_LIMIT_REACHED");
    assert!(refused.get_details_retry_info().is_some());
    let ops_watch = pb::WatchUpgradeRequest {
        region_id: "cn-shenzhen".into(),
        ..watch_request("dds-sandboxsz", "8.0")
    };
    let mut other = client
        .watch_upgrade(with_token(ops_watch, OPS_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert!(other.message().await.unwrap().is_some());
}
