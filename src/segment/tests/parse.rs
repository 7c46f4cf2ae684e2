//! `QuestionNumber`: parsing, canonical form, order, serde.

use std::collections::BTreeSet;

use serde::de::value::{Error as DeError, StrDeserializer};
use serde::de::IntoDeserializer;
use serde::Deserialize;

use super::super::QuestionNumber;
use super::q;

#[test]
fn parses_every_spelling_into_canonical_form() {
    let table = [
        ("1", "1"),
        ("01", "1"),
        ("12", "12"),
        ("1.", "1"),
        ("1)", "1"),
        ("(1)", "1"),
        ("1.a", "1.a"),
        ("1.A", "1.a"),
        ("1a", "1.a"),
        ("1a)", "1.a"),
        ("1(a)", "1.a"),
        ("1 (a)", "1.a"),
        ("1.(a)", "1.a"),
        ("1 . a", "1.a"),
        ("1-a", "1.a"),
        ("Q1", "1"),
        ("q1", "1"),
        ("Q.1", "1"),
        ("Q 1", "1"),
        ("Q-1", "1"),
        ("Q.No.1", "1"),
        ("Q. No. 7", "7"),
        ("Qno 3", "3"),
        ("Q1b", "1.b"),
        ("Q1.b)", "1.b"),
        ("Q 1(b)", "1.b"),
        ("Question 2", "2"),
        ("QUESTION 2(c)", "2.c"),
        ("Question No. 10", "10"),
        ("Ques. 4", "4"),
        ("Ans 3", "3"),
        ("Ans. 2(b)", "2.b"),
        ("Answer to Q4", "4"),
        ("Answer to Question 4 (a)", "4.a"),
        ("Solution 5", "5"),
        ("1(a)(ii)", "1.a.ii"),
        ("3 (b)(ii)", "3.b.ii"),
        ("3.b.ii", "3.b.ii"),
        ("3bii", "3.b.ii"),
        ("3.B.II", "3.b.ii"),
        ("3(b) (iv)", "3.b.iv"),
        ("4.ii", "4.ii"),
        ("4(iii)", "4.iii"),
        ("4.iv", "4.iv"),
        ("4.ix", "4.ix"),
        ("4.xii", "4.xii"),
        ("4.i", "4.i"),
        ("4.i.ii", "4.i.ii"),
        ("4.v", "4.v"),
        ("4.x.i", "4.x.i"),
        ("12.c", "12.c"),
        ("999", "999"),
        ("  2.b  ", "2.b"),
        ("2.b:", "2.b"),
        ("１．ａ", "1.a"),
        ("Ｑ１（ｂ）", "1.b"),
        ("２(ⅱ)", "2.ii"),
        ("Ⅰ", ""),
    ];
    for (raw, expected) in table {
        let parsed = QuestionNumber::parse(raw);
        if expected.is_empty() {
            assert_eq!(parsed, None, "{raw:?} should be rejected");
        } else {
            let parsed = parsed.unwrap_or_else(|| panic!("{raw:?} should parse"));
            assert_eq!(parsed.as_str(), expected, "parsing {raw:?}");
        }
    }
}

#[test]
fn rejects_what_is_not_a_question_number() {
    for raw in [
        "",
        "   ",
        "Q",
        "Question",
        "a",
        "(a)",
        "ii",
        "0",
        "Q0",
        "1000",
        "1.5",
        "1.4.2023",
        "20%",
        "Rs. 2,00,000",
        "1,50,000",
        "1.aa",
        "1.ab",
        "1.a.b",
        "1.ii.a",
        "1.a.ii.iii",
        "1.iiii",
        "1.vv",
        "1.a.xl",
        "Section 2",
        "IAS 1",
        "page 3",
        "1st",
        "Q1 and Q2",
        "2x+3",
        "१",
    ] {
        assert_eq!(
            QuestionNumber::parse(raw),
            None,
            "{raw:?} should be rejected"
        );
        assert!(raw.parse::<QuestionNumber>().is_err());
    }
}

#[test]
fn from_str_error_names_the_input() {
    let err = "1.5".parse::<QuestionNumber>().unwrap_err();
    assert_eq!(err.input(), "1.5");
    let message = err.to_string();
    assert!(message.contains("\"1.5\""), "{message}");
    assert!(message.contains("3.b.ii"), "{message}");
    assert_eq!("Q3(b)".parse::<QuestionNumber>().unwrap().as_str(), "3.b");
}

#[test]
fn canonical_forms_are_fixed_points() {
    for raw in [
        "1", "1.a", "3.b.ii", "12.c", "4.ii", "4.i", "4.i.iv", "7.x", "7.xxxix",
    ] {
        let number = q(raw);
        assert_eq!(number.as_str(), raw);
        assert_eq!(q(number.as_str()), number);
        assert_eq!(number.to_string(), raw);
    }
}

#[test]
fn parent_walks_up_one_level() {
    assert_eq!(q("3.b.ii").parent(), Some(q("3.b")));
    assert_eq!(q("3.b").parent(), Some(q("3")));
    assert_eq!(q("3.ii").parent(), Some(q("3")));
    assert_eq!(q("3").parent(), None);
    assert!(q("3").is_ancestor_of(&q("3.b.ii")));
    assert!(q("3.b").is_ancestor_of(&q("3.b.ii")));
    assert!(!q("3.b").is_ancestor_of(&q("3.b")));
    assert!(!q("3.b").is_ancestor_of(&q("3.c.i")));
    assert_eq!(q("3.b.ii").top_level(), 3);
}

#[test]
fn orders_in_paper_order() {
    let in_order = [
        "1", "1.a", "1.a.i", "1.a.ii", "1.a.iv", "1.a.v", "1.a.ix", "1.a.x", "1.b", "1.h", "1.i",
        "1.j", "2", "2.i", "2.ii", "2.iii", "2.iv", "2.v", "2.vi", "2.ix", "2.x", "2.xi", "10",
        "10.a", "12",
    ];
    let numbers: Vec<QuestionNumber> = in_order.iter().map(|s| q(s)).collect();
    for pair in numbers.windows(2) {
        assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
    }
    let sorted: BTreeSet<QuestionNumber> = numbers.iter().rev().cloned().collect();
    assert_eq!(sorted.into_iter().collect::<Vec<_>>(), numbers);
}

#[test]
fn serde_is_a_plain_string_and_deserialising_canonicalises() {
    let deserializer: StrDeserializer<'_, DeError> = "Q3 (b)(ii)".into_deserializer();
    let number = QuestionNumber::deserialize(deserializer).unwrap();
    assert_eq!(number.as_str(), "3.b.ii");

    let deserializer: StrDeserializer<'_, DeError> = "1.5".into_deserializer();
    let err = QuestionNumber::deserialize(deserializer).unwrap_err();
    assert!(err.to_string().contains("not a question number"), "{err}");

    assert_eq!(serialize_to_string(&q("2(b)")), "2.b");
}

/// Runs `Serialize` through a serializer that only accepts strings, to prove the form.
fn serialize_to_string(number: &QuestionNumber) -> String {
    use serde::ser::{Impossible, Serialize, Serializer};

    struct StringOnly;
    macro_rules! reject {
        ($($name:ident: $ty:ty),*) => {$(
            fn $name(self, _: $ty) -> Result<String, DeError> {
                Err(serde::ser::Error::custom("not a string"))
            }
        )*};
    }
    impl Serializer for StringOnly {
        type Ok = String;
        type Error = DeError;
        type SerializeSeq = Impossible<String, DeError>;
        type SerializeTuple = Impossible<String, DeError>;
        type SerializeTupleStruct = Impossible<String, DeError>;
        type SerializeTupleVariant = Impossible<String, DeError>;
        type SerializeMap = Impossible<String, DeError>;
        type SerializeStruct = Impossible<String, DeError>;
        type SerializeStructVariant = Impossible<String, DeError>;

        fn serialize_str(self, v: &str) -> Result<String, DeError> {
            Ok(v.to_owned())
        }
        reject!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
            serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
            serialize_u64: u64, serialize_f32: f32, serialize_f64: f64, serialize_char: char,
            serialize_bytes: &[u8]);
        fn serialize_none(self) -> Result<String, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<String, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_unit(self) -> Result<String, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_unit_struct(self, _: &'static str) -> Result<String, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
        ) -> Result<String, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: &T,
        ) -> Result<String, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<String, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStruct, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, DeError> {
            Err(serde::ser::Error::custom("not a string"))
        }
    }
    number.serialize(StringOnly).unwrap()
}
