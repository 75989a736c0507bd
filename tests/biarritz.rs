//! `examples/biarritz.sh` end to end: the command line against the real
//! binary, telling the 2019 story day by day with the events each day
//! recorded printed under it.

mod common;

use common::*;

async fn output(mut cmd: tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("the script finished within two minutes")
        .expect("run bash")
}

/// The story's days, each with the sentences of the events printed under
/// it, in order (times and sequence numbers apart).
fn days(stdout: &str) -> Vec<(String, Vec<String>)> {
    let mut days: Vec<(String, Vec<String>)> = Vec::new();
    for l in stdout.lines() {
        if let Some(title) = l.strip_prefix("== ") {
            days.push((title.to_owned(), Vec::new()));
            continue;
        }
        // "   SEQ  YYYY-MM-DD HH:MM:SS  sentence"
        let mut w = l.split_whitespace();
        let (Some(seq), Some(date), Some(_time)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        if seq.parse::<u64>().is_err() || date.len() != 10 || date.as_bytes()[4] != b'-' {
            continue;
        }
        let sentence = w.collect::<Vec<_>>().join(" ");
        if let Some(d) = days.last_mut() {
            d.1.push(format!("{date} {sentence}"));
        }
    }
    days
}

#[tokio::test]
async fn the_biarritz_story_is_told_in_order_with_each_days_events_under_it() {
    let server = Server::start().await;
    let out = output(story::biarritz_script(
        &server.addr.to_string(),
        Some(ADMIN_TOKEN),
    ))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "script failed:\n{stdout}\n{stderr}");

    let told = days(&stdout);
    let want: &[(&str, &[&str])] = &[
        ("The parties", &[]),
        (
            "Two channels",
            &[
                "admin opened the channel \"The Élysée channel\": iran → france → united-states",
                "admin opened the channel \"The Tokyo channel\": iran → japan → united-states",
            ],
        ),
        (
            "25 Aug",
            &[
                "2019-08-25 iran sent \"Overture from Foreign Minister Zarif\" to united-states via france",
                "2019-08-25 france accepted \"Overture from Foreign Minister Zarif\": Received from Zarif at the summit",
                "2019-08-26 france delivered \"Overture from Foreign Minister Zarif\" to united-states: Put to President Trump",
                "2019-08-26 united-states acknowledged \"Overture from Foreign Minister Zarif\"",
            ],
        ),
        (
            "26 Aug",
            &[
                "2019-08-26 united-states sent \"A meeting is possible if the circumstances were correct\" (a reply) to iran via france",
                "2019-08-26 united-states answered \"Overture from Foreign Minister Zarif\"",
                "2019-08-26 france delivered \"A meeting is possible if the circumstances were correct\" to iran: Relayed to Rouhani and Zarif",
                "2019-08-27 iran acknowledged \"A meeting is possible if the circumstances were correct\"",
            ],
        ),
        (
            "27 Aug",
            &[
                "2019-08-27 iran sent \"Preconditions: JCPOA, sanctions relief, credit lines\" (a reply) to united-states via france",
                "2019-08-27 iran answered \"A meeting is possible if the circumstances were correct\"",
                "2019-08-27 france accepted \"Preconditions: JCPOA, sanctions relief, credit lines\"",
                "2019-08-27 france delivered \"Preconditions: JCPOA, sanctions relief, credit lines\" to united-states: Conveyed with a request for an answer before the deadline",
            ],
        ),
        (
            "28 Aug",
            &[
                "2019-08-28 iran sent \"Oil sales and the INSTEX mechanism\" to united-states via japan",
                "2019-08-28 japan declined to carry \"Oil sales and the INSTEX mechanism\": Tokyo will not carry this before the UN General Assembly",
            ],
        ),
        (
            "29 Aug",
            &[
                "2019-08-29 iran sent \"A presidential meeting at the UN General Assembly\" to united-states via france",
                "2019-08-29 france accepted \"A presidential meeting at the UN General Assembly\"",
                "2019-08-29 iran withdrew \"A presidential meeting at the UN General Assembly\": Talks with the U.S. are out of the question, says the Leader's office",
            ],
        ),
        (
            "6 Sep",
            &[
                "\"Preconditions: JCPOA, sanctions relief, credit lines\" expired unanswered (its deadline passed)",
            ],
        ),
        ("The preconditions, as the record keeps them", &[]),
        ("On the board", &[]),
    ];
    assert_eq!(told.len(), want.len(), "the days told:\n{stdout}");
    for ((title, events), (want_title, want_events)) in told.iter().zip(want) {
        assert!(
            title.starts_with(want_title),
            "{title:?} where {want_title:?} was due:\n{stdout}"
        );
        if *want_title == "The preconditions, as the record keeps them" {
            continue;
        }
        assert_eq!(
            events.len(),
            want_events.len(),
            "the events of {title:?}:\n{stdout}"
        );
        for (got, want) in events.iter().zip(want_events.iter()) {
            // The channels open today, the expiry happens now: their
            // dates are not 2019's.
            let got = match got.split_once(' ') {
                Some((_, rest)) if !want.starts_with("2019") => rest,
                _ => got.as_str(),
            };
            assert!(
                got.starts_with(want),
                "under {title:?}: {got:?}, not {want:?}:\n{stdout}"
            );
        }
    }
    // Whole subjects, and the record's own account at the end.
    assert!(
        stdout.contains("state       EXPIRED  (version 4)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1    france    FORWARDED  2019-08-27 10:00  2019-08-27 18:00  8h0m"),
        "{stdout}"
    );

    // Where the board shows it all, and with which token, whose value
    // is never printed.
    assert!(
        stdout.contains(&format!(
            "Open http://{}/ and sign in with the admin token (the one in BACKCHANNEL_TOKEN).",
            server.addr
        )),
        "{stdout}"
    );
    assert!(!stdout.contains(ADMIN_TOKEN), "{stdout}");

    // A second run refuses the record it would muddle, in one line.
    let out = output(story::biarritz_script(
        &server.addr.to_string(),
        Some(ADMIN_TOKEN),
    ))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("already holds 20 events") && err.contains("fresh server"),
        "{err}"
    );
}

#[tokio::test]
async fn with_no_server_the_story_ends_in_one_clear_line() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let out = output(story::biarritz_script(
        &closed.to_string(),
        Some(ADMIN_TOKEN),
    ))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: no Backchannel server answers at "),
        "{err}"
    );
    assert!(
        err.contains(&closed.to_string()) && err.contains("cargo run --release"),
        "{err}"
    );
    // And with no token at all, it says where the token comes from.
    let out = output(story::biarritz_script(&closed.to_string(), None)).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("BACKCHANNEL_TOKEN"), "{err}");
}
