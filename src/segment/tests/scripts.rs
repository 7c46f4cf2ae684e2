//! Realistic answer scripts, with exact expected pairs.

use super::super::segment;
use super::{check, numbers};

#[test]
fn accounting_script_with_parts_lists_and_journal_entries() {
    let page = r"Name: Ravi Kumar  Roll No 1234
CA Foundation - Paper 1 Accounting

Q1. (a) Going concern concept assumes that the business will continue
for the foreseeable future. Hence assets are shown at cost less depreciation.
Features:
1. Entity continues operations
2. No intention to liquidate
3. Financial statements prepared on this basis

(b) The accounting equation is Assets = Liabilities + Capital.
Example: Capital Rs. 1,50,000 + Loan Rs. 50,000 = Assets Rs. 2,00,000

Q2.
Journal Entries
01.04.2023  Cash A/c            Dr.  1,50,000
              To Capital A/c              1,50,000
(Being capital introduced)
15.04.2023  Purchases A/c       Dr.    20,000
              To Cash A/c                    20,000
Depreciation @ 10% p.a. = Rs. 15,000";
    check(
        &segment(&[page], None),
        "Name: Ravi Kumar  Roll No 1234\nCA Foundation - Paper 1 Accounting",
        &[
            (
                "1.a",
                "Going concern concept assumes that the business will continue\n\
                 for the foreseeable future. Hence assets are shown at cost less depreciation.\n\
                 Features:\n\
                 1. Entity continues operations\n\
                 2. No intention to liquidate\n\
                 3. Financial statements prepared on this basis",
            ),
            (
                "1.b",
                "The accounting equation is Assets = Liabilities + Capital.\n\
                 Example: Capital Rs. 1,50,000 + Loan Rs. 50,000 = Assets Rs. 2,00,000",
            ),
            (
                "2",
                "Journal Entries\n\
                 01.04.2023  Cash A/c            Dr.  1,50,000\n              \
                 To Capital A/c              1,50,000\n\
                 (Being capital introduced)\n\
                 15.04.2023  Purchases A/c       Dr.    20,000\n              \
                 To Cash A/c                    20,000\n\
                 Depreciation @ 10% p.a. = Rs. 15,000",
            ),
        ],
    );
}

#[test]
fn the_one_line_example_from_the_spec() {
    let page = "1.a The going concern concept means the business will continue. \
                1.b The accounting equation is Assets = Liabilities + Capital. \
                1.c Prudence: anticipate no profit, provide for all losses.";
    let expected = [
        (
            "1.a",
            "The going concern concept means the business will continue.",
        ),
        (
            "1.b",
            "The accounting equation is Assets = Liabilities + Capital.",
        ),
        (
            "1.c",
            "Prudence: anticipate no profit, provide for all losses.",
        ),
    ];
    check(&segment(&[page], None), "", &expected);
    let known = numbers(&["1.a", "1.b", "1.c", "2"]);
    check(&segment(&[page], Some(&known)), "", &expected);
}

#[test]
fn one_line_with_known_paper_only_splits_at_its_questions() {
    let page = "1.a Going concern is explained in AS 1 and IAS 1. \
                1.b The rate is 1.5 times and 20% p.a. as per Section 2(b). \
                1.d Not a question of this paper.";
    let known = numbers(&["1.a", "1.b", "1.c"]);
    check(
        &segment(&[page], Some(&known)),
        "",
        &[
            ("1.a", "Going concern is explained in AS 1 and IAS 1."),
            (
                "1.b",
                "The rate is 1.5 times and 20% p.a. as per Section 2(b). \
                 1.d Not a question of this paper.",
            ),
        ],
    );
}

#[test]
fn law_script_with_known_paper_keeps_lists_inside_answers() {
    let page = r"Roll No. 5521
Paper 2 - Business Laws

Ans 1
A contract is an agreement enforceable by law (Section 2(h)).
Essentials of a valid contract:
(i) Offer and acceptance
(ii) Intention to create legal relations
(iii) Lawful consideration
(iv) Capacity of parties

Ans 2 (a)
The rule in Hadley v Baxendale (1854) covers remote damages.
1. Ordinary damages are recoverable
2. Special damages only if contemplated
(b) Quantum meruit means as much as earned.";
    let known = numbers(&["1", "2.a", "2.b", "3"]);
    check(
        &segment(&[page], Some(&known)),
        "Roll No. 5521\nPaper 2 - Business Laws",
        &[
            (
                "1",
                "A contract is an agreement enforceable by law (Section 2(h)).\n\
                 Essentials of a valid contract:\n\
                 (i) Offer and acceptance\n\
                 (ii) Intention to create legal relations\n\
                 (iii) Lawful consideration\n\
                 (iv) Capacity of parties",
            ),
            (
                "2.a",
                "The rule in Hadley v Baxendale (1854) covers remote damages.\n\
                 1. Ordinary damages are recoverable\n\
                 2. Special damages only if contemplated",
            ),
            ("2.b", "Quantum meruit means as much as earned."),
        ],
    );
}

#[test]
fn law_script_without_paper_lists_after_colon_and_restarted_lists_stay() {
    let page = r"Q3 (a) Essentials of a valid contract:
(i) Offer and acceptance
(ii) Lawful consideration
(b) A minor's agreement is void ab initio (Mohori Bibee v Dharmodas Ghose).
(i) It cannot be ratified on attaining majority
(ii) No estoppel against a minor
(c) Free consent, Section 14.
Reasons:
1. Coercion
2. Undue influence";
    check(
        &segment(&[page], None),
        "",
        &[
            (
                "3.a",
                "Essentials of a valid contract:\n\
                 (i) Offer and acceptance\n\
                 (ii) Lawful consideration",
            ),
            (
                "3.b",
                "A minor's agreement is void ab initio (Mohori Bibee v Dharmodas Ghose).",
            ),
            ("3.b.i", "It cannot be ratified on attaining majority"),
            ("3.b.ii", "No estoppel against a minor"),
            (
                "3.c",
                "Free consent, Section 14.\nReasons:\n1. Coercion\n2. Undue influence",
            ),
        ],
    );
}

#[test]
fn economics_script_quantities_named_q_are_not_questions() {
    let page = r"Question 1
When price falls from P1 to P2 the quantity demanded rises from Q1 to Q2.
Q1 = 100 units and Q2 = 150 units, so Ed = (50/100) / (2/10) = 2.5
The demand is elastic as Ed > 1.
Question 2
Law of diminishing marginal utility: as consumption of a good increases,
the marginal utility derived from each successive unit falls.
MU of 3rd unit = 20 utils, MU of 4th unit = 12 utils.";
    check(
        &segment(&[page], None),
        "",
        &[
            (
                "1",
                "When price falls from P1 to P2 the quantity demanded rises from Q1 to Q2.\n\
                 Q1 = 100 units and Q2 = 150 units, so Ed = (50/100) / (2/10) = 2.5\n\
                 The demand is elastic as Ed > 1.",
            ),
            (
                "2",
                "Law of diminishing marginal utility: as consumption of a good increases,\n\
                 the marginal utility derived from each successive unit falls.\n\
                 MU of 3rd unit = 20 utils, MU of 4th unit = 12 utils.",
            ),
        ],
    );
}

#[test]
fn maths_script_results_decimals_and_brackets_stay_in_answers() {
    let page = r"1. Solve x^2 - x - 6 = 0
(x - 3)(x + 2) = 0
x = 3 or x = -2
Ans: 3, -2
2. Simple interest on Rs. 12,000 at 7.5% for 2 years
SI = PRT/100 = 12000 x 7.5 x 2 / 100
= 1,800
Ans: 1800
3. Mean of 4, 8, 15
= 27/3
9
Ans: 9";
    check(
        &segment(&[page], None),
        "",
        &[
            (
                "1",
                "Solve x^2 - x - 6 = 0\n(x - 3)(x + 2) = 0\nx = 3 or x = -2\nAns: 3, -2",
            ),
            (
                "2",
                "Simple interest on Rs. 12,000 at 7.5% for 2 years\n\
                 SI = PRT/100 = 12000 x 7.5 x 2 / 100\n\
                 = 1,800\n\
                 Ans: 1800",
            ),
            ("3", "Mean of 4, 8, 15\n= 27/3\n9\nAns: 9"),
        ],
    );
}

#[test]
fn answers_continue_across_pages() {
    let pages = [
        "Name: Priya S\nQ1. Accounting is the art of recording, classifying and\nsummarising",
        "transactions in terms of money.\nQ2. Depreciation is a permanent",
        "decline in the value of fixed assets.\n(continued on next sheet)",
    ];
    check(
        &segment(&pages, None),
        "Name: Priya S",
        &[
            (
                "1",
                "Accounting is the art of recording, classifying and\nsummarising\n\
                 transactions in terms of money.",
            ),
            (
                "2",
                "Depreciation is a permanent\ndecline in the value of fixed assets.\n\
                 (continued on next sheet)",
            ),
        ],
    );
}

#[test]
fn answers_out_of_order_with_prefixes_are_accepted_and_bare_backward_numbers_stay() {
    let page = r"Q3. Bank reconciliation statement reconciles the cash book with the pass book.
Q1. Trial balance is a list of ledger balances.
Steps:
1. Balance each ledger account
2. List the debit and credit balances
Q2. Suspense account holds the difference in the trial balance.";
    let expected = [
        (
            "3",
            "Bank reconciliation statement reconciles the cash book with the pass book.",
        ),
        (
            "1",
            "Trial balance is a list of ledger balances.\nSteps:\n\
             1. Balance each ledger account\n2. List the debit and credit balances",
        ),
        (
            "2",
            "Suspense account holds the difference in the trial balance.",
        ),
    ];
    check(&segment(&[page], None), "", &expected);
    let known = numbers(&["1", "2", "3"]);
    check(&segment(&[page], Some(&known)), "", &expected);
}

#[test]
fn a_question_answered_twice_is_merged_in_order() {
    let page = r"Q1 Goodwill is the value of reputation.
Q2 Capital expenditure gives benefit for more than one year.
Q1 (contd.) Methods: average profit, super profit, capitalisation.
Q2. Revenue expenditure is for the current year only.";
    check(
        &segment(&[page], None),
        "",
        &[
            (
                "1",
                "Goodwill is the value of reputation.\n\
                 (contd.) Methods: average profit, super profit, capitalisation.",
            ),
            (
                "2",
                "Capital expenditure gives benefit for more than one year.\n\
                 Revenue expenditure is for the current year only.",
            ),
        ],
    );
}

#[test]
fn ocr_noise_spaces_case_full_width_and_blank_lines() {
    let page = "1 . a   Stock is valued at cost or NRV, whichever is lower.   \n\n\n\n\
                It follows the prudence concept.\t\n\
                Q 2 Partnership deed is the agreement between partners.\n\
                q3 Interest on capital is allowed @ 6% p.a.\n\
                Ｑ４．Ｒｅａｌｉｓａｔｉｏｎ account is prepared on dissolution.";
    check(
        &segment(&[page], None),
        "",
        &[
            (
                "1.a",
                "Stock is valued at cost or NRV, whichever is lower.\n\n\
                 It follows the prudence concept.",
            ),
            ("2", "Partnership deed is the agreement between partners."),
            ("3", "Interest on capital is allowed @ 6% p.a."),
            (
                "4",
                "Ｒｅａｌｉｓａｔｉｏｎ account is prepared on dissolution.",
            ),
        ],
    );
}

#[test]
fn roman_parts_under_letters() {
    let page = r"Q2
(a) Types of errors
(i) Errors of omission
(ii) Errors of commission
(b) Rectification
(i) Before preparation of trial balance
(ii) After preparation of trial balance
(iii) After final accounts";
    let expected = [
        ("2.a", "Types of errors"),
        ("2.a.i", "Errors of omission"),
        ("2.a.ii", "Errors of commission"),
        ("2.b", "Rectification"),
        ("2.b.i", "Before preparation of trial balance"),
        ("2.b.ii", "After preparation of trial balance"),
        ("2.b.iii", "After final accounts"),
    ];
    check(&segment(&[page], None), "", &expected);
    let known = numbers(&["1", "2.a.i", "2.a.ii", "2.b.i", "2.b.ii", "2.b.iii", "3"]);
    check(&segment(&[page], Some(&known)), "", &expected);
}

#[test]
fn letter_i_after_h_and_roman_i_otherwise() {
    let page = r"Q5
(g) Calls in arrear
(h) Calls in advance
(i) Forfeiture of shares
(j) Reissue of forfeited shares
Q6
(i) Debentures are debt
(ii) Shares are ownership";
    check(
        &segment(&[page], None),
        "",
        &[
            ("5.g", "Calls in arrear"),
            ("5.h", "Calls in advance"),
            ("5.i", "Forfeiture of shares"),
            ("5.j", "Reissue of forfeited shares"),
            ("6.i", "Debentures are debt"),
            ("6.ii", "Shares are ownership"),
        ],
    );
}

#[test]
fn known_paper_resolves_i_as_letter_or_roman() {
    // The paper letters question 7 up to "i", which has roman parts: "(i)" after 7.b is still
    // the letter when 7.b.i is not on the paper.
    let page = "Q7 (b) Share capital\n(i) Reserve capital\n(ii) Part of the uncalled capital";
    let known = numbers(&["7.a", "7.b", "7.h", "7.i.i", "7.i.ii"]);
    check(
        &segment(&[page], Some(&known)),
        "",
        &[
            ("7.b", "Share capital"),
            ("7.i", "Reserve capital"),
            ("7.i.ii", "Part of the uncalled capital"),
        ],
    );
    // A paper numbering question 8 with roman parts directly.
    let page = "Q8\n(i) Bills receivable\n(ii) Bills payable\n(iii) Accommodation bills";
    let known = numbers(&["8.i", "8.ii", "8.iii"]);
    check(
        &segment(&[page], Some(&known)),
        "",
        &[
            ("8.i", "Bills receivable"),
            ("8.ii", "Bills payable"),
            ("8.iii", "Accommodation bills"),
        ],
    );
}

#[test]
fn preamble_only_and_empty_scripts() {
    let seg = segment(
        &["  Name: Anil Mehta\nRoll No 7788\nCentre: Pune  \n"],
        None,
    );
    check(&seg, "Name: Anil Mehta\nRoll No 7788\nCentre: Pune", &[]);
    check(&segment(&[], None), "", &[]);
    check(&segment(&["", "  \n \n"], None), "", &[]);
}

#[test]
fn all_the_prefixed_spellings() {
    let page = r"Question 1: Cost accounting ascertains cost.
Ans. 2(b) Marginal costing treats fixed cost as period cost.
Answer to Q3 Standard costing sets predetermined costs.
Q.4 Budget is a plan in figures.
Q. No. 5 Overheads are indirect costs.
Ans 6 - ABC allocates overheads by activities.
Q7(a)(ii) Idle time is paid time with no work.
Q8.b) Labour turnover measures employee change.
Answer: 9 Reconciliation of cost and financial accounts.";
    check(
        &segment(&[page], None),
        "",
        &[
            ("1", "Cost accounting ascertains cost."),
            ("2.b", "Marginal costing treats fixed cost as period cost."),
            ("3", "Standard costing sets predetermined costs."),
            ("4", "Budget is a plan in figures."),
            ("5", "Overheads are indirect costs."),
            ("6", "ABC allocates overheads by activities."),
            ("7.a.ii", "Idle time is paid time with no work."),
            ("8.b", "Labour turnover measures employee change."),
            ("9", "Reconciliation of cost and financial accounts."),
        ],
    );
}

#[test]
fn all_the_bare_spellings() {
    let page = r"1.a Assets
1(b) Liabilities
1 (c) Capital
1d) Drawings
1.(e) Revenue
2. Expenses
3) Gains
(4) Losses
5.a.ii Accruals
5(b)(iii) Prepayments";
    check(
        &segment(&[page], None),
        "",
        &[
            ("1.a", "Assets"),
            ("1.b", "Liabilities"),
            ("1.c", "Capital"),
            ("1.d", "Drawings"),
            ("1.e", "Revenue"),
            ("2", "Expenses"),
            ("3", "Gains"),
            ("4", "Losses"),
            ("5.a.ii", "Accruals"),
            ("5.b.iii", "Prepayments"),
        ],
    );
}

#[test]
fn mid_line_markers_only_in_strong_forms_and_not_references() {
    let page = "Q1 Under Section 2(b) of the Act and as per Rule 3(a), \
                page 3 of IAS 1 the answer stands, as discussed in Q2 later. \
                Q2 Dividend is paid out of profits on 31.3.2024. Answer to Q3 \
                Bonus shares are issued from reserves. see 1(a) above. Ans 4 Rights issue.";
    check(
        &segment(&[page], None),
        "",
        &[
            (
                "1",
                "Under Section 2(b) of the Act and as per Rule 3(a), page 3 of IAS 1 the answer \
                 stands, as discussed in Q2 later.",
            ),
            ("2", "Dividend is paid out of profits on 31.3.2024."),
            (
                "3",
                "Bonus shares are issued from reserves. see 1(a) above.",
            ),
            ("4", "Rights issue."),
        ],
    );
}

#[test]
fn known_paper_rejects_numbers_not_on_it_and_accepts_parents() {
    let page = r"1.
(a) Sole proprietorship has unlimited liability.
(b) Partnership needs at least two persons.
Q7. This is not on the paper, so it stays here.
(c) not on the paper either
2. Company is an artificial person.
4. Not on the paper.
3. LLP combines both.";
    let known = numbers(&["1.a", "1.b", "2", "3"]);
    check(
        &segment(&[page], Some(&known)),
        "",
        &[
            ("1.a", "Sole proprietorship has unlimited liability."),
            (
                "1.b",
                "Partnership needs at least two persons.\n\
                 Q7. This is not on the paper, so it stays here.\n\
                 (c) not on the paper either",
            ),
            (
                "2",
                "Company is an artificial person.\n4. Not on the paper.",
            ),
            ("3", "LLP combines both."),
        ],
    );
}

#[test]
fn numbered_list_longer_than_the_next_question_number() {
    let page = r"Q2 Features of a joint stock company:
1. Separate legal entity
2. Limited liability
3. Perpetual succession
4. Common seal
5. Transferability of shares
Q3 A private company has at least two members.";
    check(
        &segment(&[page], None),
        "",
        &[
            (
                "2",
                "Features of a joint stock company:\n1. Separate legal entity\n\
                 2. Limited liability\n3. Perpetual succession\n4. Common seal\n\
                 5. Transferability of shares",
            ),
            ("3", "A private company has at least two members."),
        ],
    );
}

#[test]
fn numbered_list_restarting_inside_answers_without_colon() {
    let page = r"1. Accounting concepts
1. Business entity
2. Money measurement
3. Going concern
2. Accounting conventions are consistency and disclosure.";
    check(
        &segment(&[page], None),
        "",
        &[
            (
                "1",
                "Accounting concepts\n1. Business entity\n2. Money measurement\n3. Going concern",
            ),
            (
                "2",
                "Accounting conventions are consistency and disclosure.",
            ),
        ],
    );
}

#[test]
fn empty_parent_marker_makes_no_pair_but_a_parent_with_text_keeps_it() {
    let page = "Q1\n(a) Debit what comes in.\n(b) Credit what goes out.\n\
                Q2 Rules of debit and credit:\n(a) Personal account\n(b) Real account";
    let known = numbers(&["1.a", "1.b", "2.a", "2.b"]);
    check(
        &segment(&[page], Some(&known)),
        "",
        &[
            ("1.a", "Debit what comes in."),
            ("1.b", "Credit what goes out."),
            ("2", "Rules of debit and credit:"),
            ("2.a", "Personal account"),
            ("2.b", "Real account"),
        ],
    );
}

#[test]
fn student_sub_divisions_of_a_single_question_stay_in_its_answer() {
    let page = r"1. Capital is owner's investment.
2(a) Fixed assets are held for long term use.
2(b) Current assets are converted to cash within a year.
3. Liabilities are amounts owed.";
    let known = numbers(&["1", "2", "3"]);
    check(
        &segment(&[page], Some(&known)),
        "",
        &[
            ("1", "Capital is owner's investment."),
            (
                "2",
                "(a) Fixed assets are held for long term use.\n\
                 2(b) Current assets are converted to cash within a year.",
            ),
            ("3", "Liabilities are amounts owed."),
        ],
    );
}

#[test]
fn answers_keep_the_students_own_characters() {
    let page = "Q1. “Going concern” — ₹ 5,00,000 का व्यापार\nQ2：ＦＩＦＯ method";
    check(
        &segment(&[page], None),
        "",
        &[
            ("1", "“Going concern” — ₹ 5,00,000 का व्यापार"),
            ("2", "ＦＩＦＯ method"),
        ],
    );
}

#[test]
fn answer_labels_after_markers_are_removed_but_results_kept() {
    let page = r"Q1.
Ans: Depreciation = (Cost - Scrap) / Life
= (1,10,000 - 10,000) / 5
Ans: Rs. 20,000 p.a.
Q2 Ans. Written down value method charges more in early years.
Q3 Answer:- Sum of years digits method.
Q4 Answer is in the table below.";
    check(
        &segment(&[page], None),
        "",
        &[
            (
                "1",
                "Depreciation = (Cost - Scrap) / Life\n= (1,10,000 - 10,000) / 5\n\
                 Ans: Rs. 20,000 p.a.",
            ),
            (
                "2",
                "Written down value method charges more in early years.",
            ),
            ("3", "Sum of years digits method."),
            ("4", "Answer is in the table below."),
        ],
    );
}

#[test]
fn crlf_line_endings() {
    let page = "Name: Meena\r\nQ1. Cash book\r\nrecords cash.\r\n\r\nQ2. Petty cash book\r\n";
    check(
        &segment(&[page], None),
        "Name: Meena",
        &[("1", "Cash book\nrecords cash."), ("2", "Petty cash book")],
    );
}

#[test]
fn dates_amounts_and_ledger_lines_are_never_markers() {
    let page = r"Q1 Ledger of Mr. X
1-Apr-2023 To Balance b/d 25,000
1,50,000 units sold
20% discount allowed
2023. Year of account
12th March: goods returned
3 marks question
1.5 times the current ratio
(x) Unfavourable variance";
    let seg = segment(&[page], None);
    check(
        &seg,
        "",
        &[
            (
                "1",
                "Ledger of Mr. X\n1-Apr-2023 To Balance b/d 25,000\n1,50,000 units sold\n\
                 20% discount allowed\n2023. Year of account\n12th March: goods returned\n\
                 3 marks question\n1.5 times the current ratio",
            ),
            ("1.x", "Unfavourable variance"),
        ],
    );
}

#[test]
fn weak_part_forms_count_only_with_the_paper() {
    let page = "Q4\na. Cash flow from operating activities\nb. Cash flow from investing activities";
    check(
        &segment(&[page], None),
        "",
        &[(
            "4",
            "a. Cash flow from operating activities\nb. Cash flow from investing activities",
        )],
    );
    let known = numbers(&["4.a", "4.b"]);
    check(
        &segment(&[page], Some(&known)),
        "",
        &[
            ("4.a", "Cash flow from operating activities"),
            ("4.b", "Cash flow from investing activities"),
        ],
    );
}

#[test]
fn prefixed_return_to_an_earlier_question_with_known_paper() {
    let page = r"Q2 (a) Contribution = Sales - Variable cost
(b) P/V ratio = Contribution / Sales x 100
Q1(b) Break even point = Fixed cost / P/V ratio
1. Margin of safety is stated in the answer above
(a) not going back to 1.a with a bare part";
    let known = numbers(&["1.a", "1.b", "2.a", "2.b"]);
    check(
        &segment(&[page], Some(&known)),
        "",
        &[
            ("2.a", "Contribution = Sales - Variable cost"),
            ("2.b", "P/V ratio = Contribution / Sales x 100"),
            (
                "1.b",
                "Break even point = Fixed cost / P/V ratio\n\
                 1. Margin of safety is stated in the answer above\n\
                 (a) not going back to 1.a with a bare part",
            ),
        ],
    );
}

#[test]
fn many_questions_in_a_long_script_keep_paper_order_of_appearance() {
    let mut page = String::from("Candidate: Sunil\n");
    for n in 1..=40 {
        page.push_str(&format!(
            "Q{n}. Answer number {n} line one.\nLine two of {n}.\n"
        ));
    }
    let seg = segment(&[&page], None);
    assert_eq!(seg.unassigned_text, "Candidate: Sunil");
    assert_eq!(seg.pairs.len(), 40);
    for (i, pair) in seg.pairs.iter().enumerate() {
        let n = i + 1;
        assert_eq!(pair.question_number.as_str(), n.to_string());
        assert_eq!(
            pair.answer,
            format!("Answer number {n} line one.\nLine two of {n}.")
        );
    }
}

#[test]
fn parts_on_the_same_line_as_the_question() {
    let page = "Q1) a) Sole trader\nb) Partnership\nQ2: (i) Shares\n(ii) Debentures\n\
                3) (a) Cash sales\n(b) Credit sales";
    check(
        &segment(&[page], None),
        "",
        &[
            ("1.a", "Sole trader"),
            ("1.b", "Partnership"),
            ("2.i", "Shares"),
            ("2.ii", "Debentures"),
            ("3.a", "Cash sales"),
            ("3.b", "Credit sales"),
        ],
    );
}

#[test]
fn results_written_like_answer_labels_stay_in_the_working() {
    let page = r"Q1 Find the NPV of the project.
PV of inflows = 1,10,000 and outflow = 1,00,000
Ans. 10
Q2 To find the IRR, interpolate between 10% and 15%.
IRR = 10% + 2%
Ans 12
Answer 3
(a) Payback period = 3 years
Q4
Answer
Accounting rate of return = 18%";
    check(
        &segment(&[page], None),
        "",
        &[
            (
                "1",
                "Find the NPV of the project.\n\
                 PV of inflows = 1,10,000 and outflow = 1,00,000\nAns. 10",
            ),
            (
                "2",
                "To find the IRR, interpolate between 10% and 15%.\nIRR = 10% + 2%\nAns 12",
            ),
            ("3.a", "Payback period = 3 years"),
            ("4", "Accounting rate of return = 18%"),
        ],
    );
}

#[test]
fn mid_line_return_to_an_earlier_question_needs_a_sentence_end() {
    let page = "Q2 Cash flow statement shows inflows. Q1 Fund flow shows working capital. \
                Q3 Ratio analysis compares figures unlike Q1 which lists them.";
    check(
        &segment(&[page], None),
        "",
        &[
            ("2", "Cash flow statement shows inflows."),
            ("1", "Fund flow shows working capital."),
            (
                "3",
                "Ratio analysis compares figures unlike Q1 which lists them.",
            ),
        ],
    );
}

#[test]
fn answer_colon_number_counts_only_as_the_next_question() {
    let page = r"Ans: 1 Fixed cost does not change with output.
Contribution per unit = 40 - 25 = 15
Ans: 45 units
Ans: 2 Variable cost changes with output.";
    check(
        &segment(&[page], None),
        "",
        &[
            (
                "1",
                "Fixed cost does not change with output.\n\
                 Contribution per unit = 40 - 25 = 15\nAns: 45 units",
            ),
            ("2", "Variable cost changes with output."),
        ],
    );
}

#[test]
fn parts_not_on_the_paper_under_a_question_with_parts_stay_in_the_text() {
    let page = "Q7 (b)(ii) Sweat equity shares are issued to employees.\n\
                Q7e Employee stock option is a right, not an obligation.";
    let known = numbers(&["7.a", "7.b.i", "7.b.ii", "7.c"]);
    check(
        &segment(&[page], Some(&known)),
        "",
        &[(
            "7.b.ii",
            "Sweat equity shares are issued to employees.\n\
             Q7e Employee stock option is a right, not an obligation.",
        )],
    );
}

#[test]
fn unicode_spaces_and_page_headers() {
    let pages = [
        "Roll No: 556677\u{3000}Page 1\nQ\u{3000}1.\u{a0}Materiality means significance.",
        "Page 2\n- 2 -\nIt depends on size and nature.\n２．Consistency means the same methods.",
    ];
    check(
        &segment(&pages, None),
        "Roll No: 556677\u{3000}Page 1",
        &[
            (
                "1",
                "Materiality means significance.\nPage 2\n- 2 -\nIt depends on size and nature.",
            ),
            ("2", "Consistency means the same methods."),
        ],
    );
}

#[test]
fn pathological_inputs_stay_linear() {
    // Each of these would take minutes if any step were quadratic in the line length.
    let long_lines = [
        "Q1 ".repeat(50_000),
        "(a) (b) (c) (i) (ii) ".repeat(10_000),
        format!("Q{}", " . ".repeat(100_000)),
        format!("1.{}", "a".repeat(200_000)),
        "Ans 1\n\n\n".repeat(30_000),
        "1. 2. 3. (a) (b) 1(a) 2(b) Q3 Ans: 4 ".repeat(5_000),
        "Ｑ１．ａ ⅱ ".repeat(20_000),
    ];
    for line in &long_lines {
        let seg = segment(&[line], None);
        let known = numbers(&["1", "1.a", "1.b", "2.b", "3"]);
        let with_paper = segment(&[line], Some(&known));
        assert!(seg.pairs.len() <= 1_000 && with_paper.pairs.len() <= 1_000);
    }
}

#[test]
fn answer_colon_forms_with_parts() {
    let page = "Answer: 1(a) Cost centre is a unit of activity.\n\
                Answer: 1(b) Profit centre earns revenue.\n\
                Answer:- 2 Investment centre controls assets.";
    check(
        &segment(&[page], None),
        "",
        &[
            ("1.a", "Cost centre is a unit of activity."),
            ("1.b", "Profit centre earns revenue."),
            ("2", "Investment centre controls assets."),
        ],
    );
}

#[test]
fn numbers_that_are_never_markers_even_before_any_question() {
    let page = r"1.5 times the quick ratio
Rs. 2,00,000 paid on 1.4.2023
20% of the profit
Section 2 of the Act, see page 3 and IAS 1
IAS 1 Presentation of Financial Statements
31/03/2024 closing date
15 March 2024
1st April 2023
2,00,000 units
2023-24 financial year
10:30 am
5 - 3 = 2
3 x 4 = 12
(2 marks)
Q = 50 units
Ans = 45
I. Introduction
A. K. Sharma, Roll No 12
(x + y)";
    let seg = segment(&[page], None);
    assert_eq!(seg.pairs, vec![], "{:#?}", seg.pairs);
    assert_eq!(seg.unassigned_text, page);
    let known = numbers(&["1", "2", "3", "5", "15", "20", "31"]);
    let seg = segment(&[page], Some(&known));
    assert_eq!(seg.pairs, vec![], "{:#?}", seg.pairs);
}
