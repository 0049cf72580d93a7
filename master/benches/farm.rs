//! Jobs per second through the whole farm (SubmitJob → RabbitMQ → scheduler → worker
//! queue → worker → ReportResults → store), next to a bare lapin publish / confirm /
//! consume / ack loop of the same messages measured in the same run, the same farm
//! with every process on mutual TLS (the cost of mTLS), and the scheduler's decision
//! time over 1,000 simulated workers.
//!
//! Needs RabbitMQ on 127.0.0.1:5672. `cargo bench -p pyti-master --bench farm`
//! (`PYTI_BENCH_JOBS` sets the batch size, default 400).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use prost::Message;
use pyti::proto::{self, JobState};
use pyti_master::scheduler::{CapacityTable, PlatformSlots, Requirement, WorkerEntry};
use pyti_testkit::farm::client::{spec, submit, wait_offered};
use pyti_testkit::farm::{TestFarm, AMQP, PLATFORM};
use tokio::task::JoinSet;

const IN_FLIGHT: usize = 16;

fn message(n: usize) -> Vec<u8> {
    proto::QueuedJob {
        job_id: uuid::Uuid::now_v7().to_string(),
        spec: Some(spec(&format!("bench-{n}"), "1.0", PLATFORM, &[])),
        attempt: 1,
        submitted_at: Some(pyti::grpc::now_timestamp()),
        reason: "submitted".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Publishes `jobs` messages (`IN_FLIGHT` awaiting their confirm at once) to a quorum
/// queue while a consumer acks them; returns the time until the last ack.
async fn bare_lapin(jobs: usize) -> Duration {
    let connection = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let publish = connection.create_channel().await.unwrap();
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let consume = connection.create_channel().await.unwrap();
    let queue = format!("{}.bare", pyti_testkit::farm::prefix());
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    publish
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    let mut consumer = consume
        .basic_consume(
            &queue,
            "bench",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let payloads: Vec<Vec<u8>> = (0..jobs).map(message).collect();
    let start = Instant::now();
    let mut acking = JoinSet::new();
    acking.spawn(async move {
        for _ in 0..jobs {
            let delivery = consumer.next().await.unwrap().unwrap();
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
        }
    });
    let payloads = Arc::new(payloads);
    let mut publishers = JoinSet::new();
    for lane in 0..IN_FLIGHT {
        let channel = publish.clone();
        let queue = queue.clone();
        let payloads = Arc::clone(&payloads);
        publishers.spawn(async move {
            for n in (lane..payloads.len()).step_by(IN_FLIGHT) {
                channel
                    .basic_publish(
                        "",
                        &queue,
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &payloads[n],
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        });
    }
    publishers.join_all().await;
    acking.join_all().await;
    let elapsed = start.elapsed();
    consume.close(200, "done").await.unwrap();
    publish
        .queue_delete(&queue, QueueDeleteOptions::default())
        .await
        .unwrap();
    connection.close(200, "done").await.unwrap();
    elapsed
}

/// Submits `jobs` jobs (`IN_FLIGHT` SubmitJob calls at once) to an in-process master
/// with one worker whose executor answers at once, every call on mutual TLS when
/// `mtls`; returns the time until every job has its results stored.
async fn whole_farm(jobs: usize, mtls: bool) -> Duration {
    let farm = TestFarm::builder().lease_s(60).mtls_if(mtls).start().await;
    farm.worker("bench").slots(32).run_ms(0).start().await;
    let client = farm.jobs().await;
    wait_offered(&client, PLATFORM, Duration::from_secs(20)).await;
    let start = Instant::now();
    let mut submitters = JoinSet::new();
    for lane in 0..IN_FLIGHT {
        let mut client = client.clone();
        submitters.spawn(async move {
            for n in (lane..jobs).step_by(IN_FLIGHT) {
                submit(
                    &mut client,
                    spec(&format!("bench-{n}"), "1.0", PLATFORM, &[]),
                )
                .await;
            }
        });
    }
    submitters.join_all().await;
    let store = farm.store().await;
    loop {
        let done = store
            .list_jobs(&pyti_master::store::JobFilter {
                states: vec![JobState::Succeeded],
                limit: 100_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len();
        if done == jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    assert_eq!(farm.runs().len(), jobs);
    farm.finish().await;
    elapsed
}

fn simulated_table(workers: usize) -> CapacityTable {
    let variants = [
        "python3.9",
        "python3.10",
        "python3.11",
        "python3.12",
        "gpu",
        "big-memory",
    ];
    let platforms = ["linux-debian", "linux-fedora", "windows"];
    let mut table = CapacityTable::default();
    for w in 0..workers {
        let mut entry = WorkerEntry {
            connected: true,
            last_assigned: (w % 97) as u64,
            ..WorkerEntry::default()
        };
        for (p, platform) in platforms.iter().enumerate() {
            if (w + p) % 3 == 0 && p != 0 {
                continue;
            }
            let offered: BTreeSet<String> = variants
                .iter()
                .enumerate()
                .filter(|(v, _)| (w >> v) & 1 == 1 || *v == 2)
                .map(|(_, v)| (*v).to_owned())
                .collect();
            entry.platforms.insert(
                (*platform).to_owned(),
                PlatformSlots {
                    variants: offered,
                    total: 4,
                    ready: (w % 5) as u32,
                    running: 0,
                    broken: 0,
                },
            );
        }
        table.workers.insert(format!("worker-{w:04}"), entry);
    }
    table
}

fn scheduler_decisions() {
    let table = simulated_table(1000);
    let requirements: Vec<Requirement> = (0..1000)
        .map(|n| {
            let variants: Vec<String> = match n % 4 {
                0 => vec![],
                1 => vec!["python3.11".into()],
                2 => vec!["python3.12".into(), "gpu".into()],
                _ => vec!["big-memory".into()],
            };
            Requirement::new(
                ["linux-debian", "linux-fedora", "windows"][n % 3],
                &variants,
            )
        })
        .collect();
    let rounds = 20;
    let start = Instant::now();
    let mut chosen = 0;
    for _ in 0..rounds {
        for requirement in &requirements {
            chosen += usize::from(table.choose(requirement).is_some());
        }
    }
    let per_choice = start.elapsed() / (rounds * requirements.len()) as u32;
    let requests: Vec<(String, Requirement)> = requirements
        .iter()
        .enumerate()
        .map(|(n, r)| (format!("job-{n}"), r.clone()))
        .collect();
    let start = Instant::now();
    let mut planned = table.clone();
    let placed = planned.plan(&requests);
    let plan_time = start.elapsed();
    println!(
        "scheduler, 1000 workers: {:.1} µs per decision ({} of {} found a worker); planning 1000 waiting jobs at once: {:.1} ms ({} placed)",
        per_choice.as_secs_f64() * 1e6,
        chosen / rounds,
        requirements.len(),
        plan_time.as_secs_f64() * 1e3,
        placed.len()
    );
}

fn main() {
    let jobs: usize = std::env::var("PYTI_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Warm up connections and caches, then measure.
        bare_lapin(50).await;
        let bare = bare_lapin(jobs).await;
        let farm = whole_farm(jobs, false).await;
        let mtls = whole_farm(jobs, true).await;
        let rate = |d: Duration| jobs as f64 / d.as_secs_f64();
        println!("bare lapin publish/confirm/consume/ack: {jobs} messages in {:.2} s = {:.0} msg/s", bare.as_secs_f64(), rate(bare));
        println!(
            "whole farm (SubmitJob → RabbitMQ → scheduler → worker → ReportResults): {jobs} jobs in {:.2} s = {:.0} jobs/s",
            farm.as_secs_f64(),
            rate(farm)
        );
        println!("farm / bare lapin: {:.2} (each job crosses RabbitMQ twice and the store five times)", rate(farm) / rate(bare));
        println!(
            "whole farm on mutual TLS (every call authenticated by certificate): {jobs} jobs in {:.2} s = {:.0} jobs/s",
            mtls.as_secs_f64(),
            rate(mtls)
        );
        println!("mutual TLS / plaintext: {:.2} (the cost of mTLS on the farm)", rate(mtls) / rate(farm));
    });
    scheduler_decisions();
}
