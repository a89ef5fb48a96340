//! Every scenario of `keepalive-lab experiment` as a test of its own: the scenario's checks are the
//! assertions (what the client saw, when, and what the origin saw), run at the `--quick` scale.
//!
//! The silent-loss scenarios make a network namespace and drop its packets, which takes root,
//! iproute2 and iptables: they are ignored by plain `cargo test`, and run by `cargo test --
//! --include-ignored` (`scripts/test-all`, hence CI), where a machine that cannot run them fails them.
//! So is the rolling deploy, which starts a PostgreSQL server and the origin's own binary.

use keepalive_lab::experiment::scenarios::{self, Scale};
use keepalive_lab::experiment::{run_scenario, table};

/// Runs scenario `name` and fails unless every observation matched its expectation; a scenario that
/// could not run here fails too, saying why.
async fn passes(name: &str) {
    let scenario = scenarios::find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    let row = run_scenario(scenario, Scale(1)).await;
    let passed = row.passed();
    assert!(passed, "\n{}", table(&[row]));
}

macro_rules! scenario_tests {
    (
        anywhere: $($test:ident => $name:literal),+ ;
        network_namespaces: $($netns_test:ident => $netns_name:literal),+ ;
        postgres: $($pg_test:ident => $pg_name:literal),+ $(,)?
    ) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                passes($name).await;
            }
        )+

        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs root, iproute2 and iptables (network namespaces)"]
            async fn $netns_test() {
                passes($netns_name).await;
            }
        )+

        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "starts a PostgreSQL server (Debian's postgresql package) and the origin's binary"]
            async fn $pg_test() {
                passes($pg_name).await;
            }
        )+

        #[test]
        fn every_scenario_has_a_test() {
            let tested = [$($name,)+ $($netns_name,)+ $($pg_name),+];
            for scenario in scenarios::ALL {
                assert!(tested.contains(&scenario.name), "{} has no test", scenario.name);
            }
        }
    };
}

scenario_tests! {
    anywhere:
    idle_timer_truncates_and_the_origin_sees_the_client_go => "idle-cut",
    a_clean_cut_looks_like_an_end_but_the_client_tells_it_was_cut => "clean-cut",
    a_reset_cut_resets_the_client => "reset-cut",
    heartbeats_keep_a_stream_open_past_the_idle_limit => "heartbeat-saves",
    total_timer_cuts_despite_heartbeats => "total-timer",
    first_byte_timer_answers_504 => "first-byte-504",
    client_fin_ends_the_origins_stream => "client-fin",
    client_rst_ends_the_origins_stream => "client-rst",
    killed_origin_leaves_the_client_truncated_never_complete => "origin-killed",
    origin_down_answers_502_then_recovers => "origin-down",
    injected_rst_resets_the_client => "injected-rst",
    byte_limit_passes_exactly_70_bytes => "byte-limit",
    buffering_hop_swallows_heartbeats_and_the_idle_timer_cuts => "buffering-hop",
    x_accel_buffering_no_lets_heartbeats_through_a_buffering_hop => "accel-buffering-no",
    gzip_hop_swallows_heartbeats_and_the_idle_timer_cuts => "compression-hop",
    no_transform_lets_heartbeats_through_a_gzip_hop => "no-transform",
    resuming_client_assembles_a_job_through_repeated_idle_cuts => "job-resume-idle",
    resuming_client_assembles_a_job_through_repeated_resets => "job-resume-rst",
    a_deploy_drains_one_replica_and_no_request_fails => "deploy-drain",
    a_killed_replica_truncates_only_its_streams_and_no_request_fails => "replica-killed";
    network_namespaces:
    tcp_user_timeout_drops_a_silently_lost_stream => "silent-loss",
    without_tcp_user_timeout_the_origin_streams_to_nobody => "silent-loss-no-timeout";
    postgres:
    jobs_survive_a_rolling_deploy_and_a_kill_each_line_once => "rolling-deploy",
}
