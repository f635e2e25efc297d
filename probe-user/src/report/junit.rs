//! junit.xml: one test case per criterion × stage, failures carry the
//! measured value against the threshold (GitLab, Jenkins read it).

use super::RunSummary;
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use std::time::Duration;

pub fn render(summary: &RunSummary) -> anyhow::Result<String> {
    let mut report = Report::new("pushscope");
    for stage in &summary.stages {
        let mut suite = TestSuite::new(format!("pushscope.stage{}", stage.index + 1));
        suite.set_time(Duration::from_secs_f64(
            (stage.end_s - stage.start_s).max(0.0),
        ));
        for c in &stage.criteria {
            let status = if c.pass {
                TestCaseStatus::success()
            } else {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(c.explain());
                s.set_type(if c.value.is_none() {
                    "not_measured"
                } else {
                    "threshold"
                });
                s.set_description(format!("stage `{}`: {}", stage.name, c.explain()));
                s
            };
            let mut case = TestCase::new(format!("{} [{}]", c.name, stage.name), status);
            case.set_classname(format!("pushscope.stage{}", stage.index + 1));
            suite.add_test_case(case);
        }
        if !stage.complete {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_message(
                summary
                    .incomplete_reason
                    .clone()
                    .unwrap_or_else(|| "stage cut short".into()),
            );
            suite.add_test_case(TestCase::new(format!("stage complete [{}]", stage.name), s));
        }
        report.add_test_suite(suite);
    }
    if summary.stages.is_empty() {
        let mut suite = TestSuite::new("pushscope.run");
        let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
        s.set_message(
            summary
                .incomplete_reason
                .clone()
                .unwrap_or_else(|| "no stage was measured".into()),
        );
        suite.add_test_case(TestCase::new("run", s));
        report.add_test_suite(suite);
    }
    Ok(report.to_string()?)
}

#[cfg(test)]
mod tests {
    use crate::report::fixtures::summary;

    #[test]
    fn one_case_per_criterion_and_stage_with_failure_details() {
        let xml = super::render(&summary()).unwrap();
        assert_eq!(xml.matches("<testcase").count(), 20, "{xml}");
        assert_eq!(xml.matches("<failure").count(), 1, "{xml}");
        assert!(
            xml.contains("loss = 1 messages (threshold &lt;= 0 messages)"),
            "{xml}"
        );
        assert!(
            xml.contains("tests=\"20\"") && xml.contains("failures=\"1\""),
            "{xml}"
        );
    }
}
