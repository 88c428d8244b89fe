//! The fleet console in headless Chromium, against `up` with its reference
//! workloads: what a newcomer does after the README's first command.
//!
//! One `up` (a control plane, the sample shop and two edges running the
//! local model) serves the whole walk-through, in order: log in, the fleet,
//! a task's trace, a viewer who cannot approve (even by a forged request),
//! approving the 240 refund until its task completes, publishing a policy
//! until every edge has applied it, the audit chain status, and the kill
//! switch refusing an action that was approved after it. Every page is
//! screenshotted to `artifacts/screenshots/console/`.

use std::time::Duration;

use aios_tests::browser::Browser;
use aios_tests::{bins, UpProc};
use anyhow::{ensure, Context};
use fantoccini::Locator;
use serde_json::json;

/// Model inference on two shared cores: generous, since every wait polls.
const WORK: Duration = Duration::from_secs(420);
const SYNC: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_fleet_from_the_console() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut browser = Browser::start(&dir.path().join("browser"), "console").await?;
    let up = UpProc::start(&bins!(), &dir.path().join("up")).await?;
    let result = walk_through(&mut browser, &up).await;
    browser.close().await;
    if result.is_err() {
        eprintln!("`up` log tail:\n{}", tail(&up.log(), 60));
    }
    result
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn walk_through(browser: &mut Browser, up: &UpProc) -> anyhow::Result<()> {
    let base = up.console.trim_end_matches("/console").to_owned();
    let page = |path: &str| format!("{base}{path}");

    // A wrong password is refused with a message; the right one lands on the fleet.
    browser.goto(&page("/console/login")).await?;
    log_in(browser, "admin", "not-the-password").await?;
    let refused = browser.text("body").await?;
    ensure!(refused.contains("Wrong account name or password"), "a wrong password was not refused:\n{refused}");
    browser.shot("login-refused").await?;
    log_in(browser, "admin", &up.password).await?;
    let url = browser.client().current_url().await?;
    ensure!(url.path() == "/console/fleet", "logging in led to {url}");

    // The fleet: both edges connected, on the current bundle, with their tiers.
    let fleet = browser
        .wait_text(&page("/console/fleet"), "table#edges", SYNC, |t| t.matches("connected").count() >= 2)
        .await?;
    ensure!(fleet.contains("front-office") && fleet.contains("studio"), "fleet:\n{fleet}");
    ensure!(fleet.contains("local (local, smollm2-135m-instruct)"), "no model tier on the fleet page:\n{fleet}");
    browser.shot("fleet").await?;

    // The refund over the limit reaches the approval queue.
    let approvals =
        browser.wait_text(&page("/console/approvals"), "#approvals", WORK, |t| t.contains("shop.refund")).await?;
    ensure!(approvals.contains("240"), "the refund's exact arguments are missing:\n{approvals}");
    browser.shot("approvals").await?;
    let refund = approval_card(browser, "shop.refund").await?;
    let refund_task = task_of_card(browser, &refund).await?;

    // A task's trace: steps with tier, reason and tokens.
    let tasks =
        browser.wait_text(&page("/console/tasks?state=succeeded"), "#tasks", WORK, |t| t.contains("triage")).await?;
    ensure!(tasks.contains("succeeded"), "tasks:\n{tasks}");
    browser.shot("tasks").await?;
    browser.follow("#tasks tbody tr a").await?;
    let trace = browser.text("#trace").await?;
    for expected in ["task.step", "tier=local", "tokens_out=", "task.succeeded", "decision="] {
        ensure!(trace.contains(expected), "the trace lacks `{expected}`:\n{trace}");
    }
    browser.shot("trace").await?;

    // A viewer sees the queue but cannot decide, not even with a forged request.
    let added = up.control_plane.cli_ok(&["user", "add", "vera", "--role", "viewer"])?;
    let viewer_password = added
        .lines()
        .find_map(|l| l.strip_prefix("password (shown once): "))
        .context("`user add` printed no password")?
        .trim()
        .to_owned();
    browser.client().delete_all_cookies().await?;
    browser.goto(&page("/console/login")).await?;
    log_in(browser, "vera", &viewer_password).await?;
    browser.goto(&page("/console/approvals")).await?;
    let seen = browser.text("#approvals").await?;
    ensure!(seen.contains("shop.refund") && seen.contains("may not decide"), "viewer's queue:\n{seen}");
    ensure!(!browser.has("form[action$='/approve']").await?, "a viewer was offered the Approve button");
    browser.shot("viewer-approvals").await?;
    let forged = browser
        .client()
        .execute(
            "const csrf = document.querySelector(\"input[name='csrf']\").value;
             return fetch('/console/approvals/' + arguments[0] + '/approve', {
                 method: 'POST',
                 headers: { 'content-type': 'application/x-www-form-urlencoded' },
                 body: 'csrf=' + encodeURIComponent(csrf) + '&comment=forged',
                 redirect: 'manual',
             }).then(r => r.status);",
            vec![json!(refund)],
        )
        .await?;
    ensure!(forged == json!(403), "a viewer's forged approval got {forged}");
    let still = up.control_plane.get(&format!("/v1/approvals/{refund}")).await?;
    ensure!(still["state"] == "pending", "the forged approval changed it: {still}");

    // The admin approves the refund; the edge runs it and the task completes.
    browser.client().delete_all_cookies().await?;
    browser.goto(&page("/console/login")).await?;
    log_in(browser, "admin", &up.password).await?;
    browser.goto(&page("/console/approvals")).await?;
    let form = browser
        .client()
        .form(Locator::Css(&format!("section[data-approval='{refund}'] form[action$='/approve']")))
        .await?;
    browser.submit(form.set_by_name("comment", "customer was double charged").await?).await?;
    let notice = browser.text(".notice").await?;
    ensure!(notice.contains(&format!("Approved {refund}")), "after approving: {notice}");
    let state = browser
        .wait_text(&page(&format!("/console/tasks/{refund_task}")), "#task-state", WORK, |t| {
            t.contains("succeeded") || t.contains("failed")
        })
        .await?;
    ensure!(state.contains("succeeded"), "the approved refund's task ended {state}");
    let trace = browser.text("#trace").await?;
    ensure!(trace.contains("customer was double charged"), "the approval is missing from the trace:\n{trace}");
    browser.shot("refund-done").await?;

    // Publish a policy from the console; every edge applies it.
    browser.goto(&page("/console/policies")).await?;
    let draft = browser.client().find(Locator::Css("textarea[name='toml']")).await?.prop("value").await?;
    let draft = draft.context("no bundle text in the editor")?;
    ensure!(draft.contains("approval_ttl = \"24h\""), "the editor does not hold the current bundle:\n{draft}");
    // A broken bundle is refused, and the text is kept.
    set_textarea(browser, &draft.replace("[agents.triage]", "[agents.triage]\nbogus = 1")).await?;
    browser.submit(browser.client().form(Locator::Css("form#publish")).await?).await?;
    let error = browser.text("#publish-error").await?;
    ensure!(error.contains("Not published"), "a broken bundle: {error}");
    set_textarea(browser, &draft.replace("approval_ttl = \"24h\"", "approval_ttl = \"12h\"")).await?;
    browser.submit(browser.client().form(Locator::Css("form#publish")).await?).await?;
    let published = browser.text("#published").await?;
    let version: u64 = published
        .trim_start_matches("Published v")
        .split(';')
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no version in `{published}`"))?;
    let applied = format!("v{version} current");
    browser.wait_text(&page("/console/policies"), "#applied-table", SYNC, |t| t.matches(&applied).count() == 2).await?;
    browser.shot("policy-applied").await?;
    browser.goto(&page(&format!("/console/policies/diff?from={}&to={version}", version - 1))).await?;
    let diff = browser.text("main").await?;
    ensure!(diff.contains("12h") && diff.contains("24h"), "the diff does not show the change:\n{diff}");
    browser.shot("policy-diff").await?;

    // The audit chains verify.
    browser.goto(&page("/console/audit")).await?;
    ensure!(!browser.has("#chain-alarm").await?, "an audit alarm: {}", browser.text("#chain-alarm").await?);
    let chains = browser.text("table#chains").await?;
    ensure!(chains.matches("verified").count() == 3, "not every chain verified:\n{chains}");
    ensure!(chains.contains("front-office") && chains.contains("operator log"), "chains:\n{chains}");
    browser.shot("audit").await?;

    // The studio's post waits for a person, and the approval says why.
    let approvals =
        browser.wait_text(&page("/console/approvals"), "#approvals", WORK, |t| t.contains("posts.publish")).await?;
    ensure!(approvals.contains("ran on `local`"), "the approval does not say why it needs review:\n{approvals}");
    let post = approval_card(browser, "posts.publish").await?;
    let post_task = task_of_card(browser, &post).await?;

    // The kill switch, behind its confirmation; then an approved action is refused.
    browser.goto(&page("/console/kill-switch")).await?;
    browser.shot("kill-switch").await?;
    browser.client().find(Locator::Css("input[name='confirm']")).await?.click().await?;
    browser.submit(browser.client().form(Locator::Css("form#kill-switch")).await?).await?;
    let published = browser.text("#published").await?;
    let off = published
        .trim_start_matches("Published v")
        .split(';')
        .next()
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no version in `{published}`"))?;
    let applied = format!("v{off} current");
    browser.wait_text(&page("/console/policies"), "#applied-table", SYNC, |t| t.matches(&applied).count() == 2).await?;
    browser.goto(&page("/console/fleet")).await?;
    let banner = browser.text(".alarm").await?;
    ensure!(banner.contains("Kill switch engaged"), "no kill-switch banner on the fleet page: {banner}");
    browser.shot("fleet-kill-switch").await?;
    browser.goto(&page("/console/approvals")).await?;
    let form = browser
        .client()
        .form(Locator::Css(&format!("section[data-approval='{post}'] form[action$='/approve']")))
        .await?;
    browser.submit(form.set_by_name("comment", "approved after the kill switch").await?).await?;
    let state = browser
        .wait_text(&page(&format!("/console/tasks/{post_task}")), "#task-state", WORK, |t| {
            t.contains("succeeded") || t.contains("failed")
        })
        .await?;
    ensure!(state.contains("failed"), "the post was published under the kill switch: {state}");
    let trace = browser.text("#trace").await?;
    ensure!(trace.contains("kill switch"), "the refusal does not name the kill switch:\n{trace}");
    browser.shot("refused-by-kill-switch").await?;
    let posts = std::fs::read_dir(up.root.join("posts"))?.count();
    ensure!(posts == 0, "{posts} posts were written under the kill switch");

    // Every console action is in the operator log, by who did it.
    browser.goto(&page("/console/audit")).await?;
    let audit = browser.text("body").await?;
    ensure!(audit.contains("operator.action") && audit.contains("admin"), "operator log:\n{audit}");
    ensure!(audit.contains("operator.refused") && audit.contains("vera"), "the forged approval is not logged");
    browser.shot("audit-after").await?;
    browser.goto(&page("/console/metrics")).await?;
    ensure!(browser.has("svg").await?, "no charts on the metrics page");
    browser.shot("metrics").await?;
    Ok(())
}

async fn log_in(browser: &Browser, name: &str, password: &str) -> anyhow::Result<()> {
    let form = browser.client().form(Locator::Css("form.login")).await.context("no login form")?;
    let form = form.set_by_name("name", name).await?.set_by_name("password", password).await?;
    browser.submit(form).await?;
    Ok(())
}

/// The id of the first waiting approval for `action` on the current page.
async fn approval_card(browser: &Browser, action: &str) -> anyhow::Result<String> {
    for card in browser.client().find_all(Locator::Css("section.approval")).await? {
        if card.text().await?.contains(action) {
            return card.attr("data-approval").await?.context("an approval card without its id");
        }
    }
    anyhow::bail!("no waiting approval for {action}")
}

/// The task an approval card links to.
async fn task_of_card(browser: &Browser, approval: &str) -> anyhow::Result<String> {
    let link = browser
        .client()
        .find(Locator::Css(&format!("section[data-approval='{approval}'] a[href^='/console/tasks/']")))
        .await?;
    let href = link.attr("href").await?.context("a task link without href")?;
    Ok(href.trim_start_matches("/console/tasks/").to_owned())
}

async fn set_textarea(browser: &Browser, text: &str) -> anyhow::Result<()> {
    browser
        .client()
        .execute("document.querySelector(\"textarea[name='toml']\").value = arguments[0];", vec![json!(text)])
        .await?;
    Ok(())
}
