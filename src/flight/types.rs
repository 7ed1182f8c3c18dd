//! `GetXdbcTypeInfo`: the SQL types our tables use, described for JDBC/ODBC-style clients.

use arrow_flight::sql::metadata::{XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder};
use arrow_flight::sql::{Nullable, Searchable, XdbcDataType};

fn type_info(name: &str, data_type: XdbcDataType, column_size: Option<i32>) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.into(),
        data_type,
        column_size,
        literal_prefix: matches!(
            data_type,
            XdbcDataType::XdbcVarchar | XdbcDataType::XdbcTimestamp
        )
        .then(|| "'".into()),
        literal_suffix: matches!(
            data_type,
            XdbcDataType::XdbcVarchar | XdbcDataType::XdbcTimestamp
        )
        .then(|| "'".into()),
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: matches!(data_type, XdbcDataType::XdbcVarchar),
        searchable: Searchable::Full,
        unsigned_attribute: Some(false),
        fixed_prec_scale: false,
        auto_increment: Some(false),
        local_type_name: Some(name.into()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: data_type,
        datetime_subcode: None,
        num_prec_radix: column_size.map(|_| 2),
        interval_precision: None,
    }
}

/// Every type a column of ours can have.
pub fn xdbc_types() -> XdbcTypeInfoData {
    let mut builder = XdbcTypeInfoDataBuilder::new();
    builder.append(type_info("VARCHAR", XdbcDataType::XdbcVarchar, None));
    builder.append(type_info("INTEGER", XdbcDataType::XdbcInteger, Some(32)));
    builder.append(type_info("BIGINT", XdbcDataType::XdbcBigint, Some(64)));
    builder.append(type_info("DOUBLE", XdbcDataType::XdbcDouble, Some(53)));
    builder.append(type_info(
        "TIMESTAMP WITH TIME ZONE",
        XdbcDataType::XdbcTimestamp,
        None,
    ));
    builder.build().expect("static type list")
}
