//! The WAF's signatures: our own, written for this gateway after the attack
//! classes the OWASP Core Rule Set tests (its regression corpus in
//! `../shared/corpus` measures them; see docs/waf.md). Each matches the
//! normalized text of one inspected value (percent- and HTML-entity-decoded,
//! lowercased, whitespace and SQL comments folded to one space).
//!
//! Paranoia 1 holds signatures that hardly appear in benign traffic;
//! higher levels add broader ones, with more false positives.

use crate::config::WafRuleFamily as Family;

pub struct Rule {
    pub id: &'static str,
    pub family: Family,
    pub paranoia: u8,
    pub pattern: &'static str,
}

const fn rule(id: &'static str, family: Family, paranoia: u8, pattern: &'static str) -> Rule {
    Rule {
        id,
        family,
        paranoia,
        pattern,
    }
}

use Family::{CommandInjection as Cmd, PathTraversal as Path, Protocol as Proto, Sqli, Xss};

pub static RULES: &[Rule] = &[
    // ── SQL injection ──────────────────────────────────────────────────
    // A quote (or bracket) closed, then a boolean or comparison keyword.
    rule(
        "sqli-100",
        Sqli,
        1,
        r#"['"`)]\s*(?:or|and|xor|div|like|rlike|regexp|sounds\s+like|\|\||&&)\b\s*[\s(]*['"`]?[\w@(-]"#,
    ),
    // A numeric tautology: `1 or 1=1`, `x and 2>1`.
    rule(
        "sqli-101",
        Sqli,
        1,
        r"\b(?:or|and|xor|\|\||&&)\s+['(]?-?\d+['\)]?\s*(?:=|<=>|<>|!=|<|>|<=|>=|\blike\b)\s*['(]?-?\d+",
    ),
    rule(
        "sqli-102",
        Sqli,
        1,
        r"\bunion\b[\s(]*(?:all\b|distinct\b)?[\s(]*select\b",
    ),
    // A statement ended and another begun.
    rule(
        "sqli-103",
        Sqli,
        1,
        r"['\)\d]\s*;\s*(?:select|insert|update|delete|drop|alter|create|truncate|exec|execute|declare|shutdown|grant|revoke|rename|replace|merge|call|waitfor)\b",
    ),
    // A string closed, then a comment hides the rest.
    rule("sqli-104", Sqli, 1, r#"['"`]\s*(?:--|#|/\*|;\s*--|\)\s*--)"#),
    rule(
        "sqli-105",
        Sqli,
        1,
        r"\b(?:sleep|benchmark|pg_sleep|randomblob|dbms_pipe\.receive_message|dbms_lock\.sleep)\s*\(|\bwaitfor\s+(?:delay|time)\s+'",
    ),
    rule(
        "sqli-106",
        Sqli,
        1,
        r"\b(?:information_schema|sysobjects|syscolumns|sysusers|sqlite_master|sqlite_temp_master|pg_catalog|pg_shadow|mysql\.user|all_tables|user_tables|xp_cmdshell|sp_executesql|sp_oacreate|msysaccessobjects)\b",
    ),
    rule(
        "sqli-107",
        Sqli,
        1,
        r"@@(?:version|datadir|hostname|servername|basedir)\b|\binto\s+(?:out|dump)file\b|\bload_file\s*\(",
    ),
    rule(
        "sqli-108",
        Sqli,
        1,
        r"\b(?:select|insert\s+into|delete\s+from|update\s+\w+\s+set|drop\s+(?:table|database))\b[^;]{0,200}?(?:--|#|/\*|;)",
    ),
    rule(
        "sqli-109",
        Sqli,
        1,
        r"\b(?:extractvalue|updatexml|exp\s*\(\s*~|geometrycollection|multipoint|polygon|linestring)\s*\(|\bcase\s+when\b.{0,80}\bthen\b",
    ),
    rule(
        "sqli-110",
        Sqli,
        1,
        r"\b(?:select|union)\b.{0,120}\bfrom\b.{0,120}\b(?:where|limit|group\s+by|order\s+by)\b",
    ),
    rule(
        "sqli-111",
        Sqli,
        1,
        r"\b(?:or|and)\s+(?:not\s+)?(?:exists|true|false|null)\b\s*(?:--|#|/\*|$|\))|\b(?:or|and)\s+['\w]+\s+(?:not\s+)?in\s*\(\s*select\b",
    ),
    rule(
        "sqli-112",
        Sqli,
        1,
        r"\b(?:database|db_name|schema_name|current_database|current_schema|user_name|suser_name|find_in_set|make_set|coalesce|ifnull|nullif|iif)\s*\(|\b(?:tempdb|msdb|northwind|mysql\.db|pg_database|sysdatabases|sys\.objects)\b",
    ),
    rule(
        "sqli-113",
        Sqli,
        1,
        r#"['"]\s*(?:collate|notnull|isnull|sounds\s+like|not\s+(?:regexp|rlike|like|between|in)\b)|\b(?:rlike|regexp|sounds\s+like)\s*['"(\d]"#,
    ),
    rule("sqli-200", Sqli, 2, r"\bselect\b.{1,200}?\bfrom\b"),
    rule(
        "sqli-201",
        Sqli,
        2,
        r"\b(?:concat(?:_ws)?|group_concat|char|chr|ascii|ord|substring|substr|mid|hex|unhex|version|database|schema|current_user|session_user|system_user|user|cast|convert|if|ifnull|coalesce|nullif)\s*\(",
    ),
    rule(
        "sqli-202",
        Sqli,
        2,
        r#"['"`]\s*(?:=|<>|!=|<=>|<|>)\s*['"`\d(]|\b(?:order|group)\s+by\s+\d+\b|\bhaving\s+\d"#,
    ),
    rule(
        "sqli-203",
        Sqli,
        2,
        r"\b(?:insert\s+into|delete\s+from|drop\s+(?:table|database|user)|alter\s+table|truncate\s+table|create\s+(?:table|user|function))\b",
    ),
    rule(
        "sqli-204",
        Sqli,
        2,
        r"0x[0-9a-f]{6,}|\bchar\s*\(\s*\d+\s*(?:,\s*\d+\s*)+\)",
    ),
    rule(
        "sqli-300",
        Sqli,
        3,
        r#"['"`].{0,40}\b(?:or|and|union|select|insert|update|delete|drop|exec|having|where|sleep)\b"#,
    ),
    rule(
        "sqli-301",
        Sqli,
        3,
        r"(?:--|#|/\*)\s*$|\b(?:limit|offset)\s+\d+\s*,?\s*\d*\s*(?:--|#|$)",
    ),
    rule(
        "sqli-400",
        Sqli,
        4,
        r#"(?:[~!@#$%^&*()\-+={}\[\]|:;"'´’‘`<>].*){6}"#,
    ),
    // ── Cross-site scripting ───────────────────────────────────────────
    rule("xss-100", Xss, 1, r"<\s*/?\s*script\b"),
    rule("xss-101", Xss, 1, r"<[^>]*?[\s/'\x22]on[a-z]{3,}\s*="),
    rule(
        "xss-102",
        Xss,
        1,
        r"(?:java|vb|live|ecma)script\s*:|\bdata\s*:\s*(?:text/html|image/svg|application/(?:x-)?javascript)|data\s*:[^,]*;\s*base64\s*,",
    ),
    rule(
        "xss-103",
        Xss,
        1,
        r"<\s*(?:iframe|frame|frameset|object|embed|applet|meta|base|link|svg|math|form|isindex|marquee|style|body|img|image|video|audio|source|input|button|details|template|xss|x)\b",
    ),
    rule(
        "xss-104",
        Xss,
        1,
        r"\bdocument\s*\.\s*(?:cookie|write|writeln|location|domain)\b|\bwindow\s*\.\s*(?:location|open|name)\b|\.\s*(?:innerhtml|outerhtml)\b|\bfromcharcode\s*\(|\bsettimeout\s*\(|\bsetinterval\s*\(",
    ),
    rule(
        "xss-105",
        Xss,
        1,
        r"\b(?:alert|prompt|confirm|eval)\s*(?:\(|`)|\bexpression\s*\(|-moz-binding\s*:|\bbehaviou?r\s*:\s*url|@import\b",
    ),
    rule(
        "xss-106",
        Xss,
        1,
        r"<!\[cdata\[|<\?xml-stylesheet|<!entity\b|<!doctype\s+\w+\s*\[",
    ),
    rule(
        "xss-107",
        Xss,
        1,
        r"\bsrcdoc\s*=|\bformaction\s*=|\bxlink:href\s*=|\bxmlns\s*(?::\w+)?\s*=\s*['\x22]?https?://www\.w3\.org/1999/xhtml",
    ),
    rule(
        "xss-200",
        Xss,
        2,
        r"\bon(?:error|load|unload|mouse\w+|focus\w*|blur|click|dblclick|key\w+|change|submit|reset|select|input|toggle|animation\w+|transition\w+|pointer\w+|begin|end|scroll|wheel|drag\w*|drop|copy|cut|paste|message|hashchange|popstate|pageshow|resize|beforeunload|afterprint|beforeprint|show|start|finish|bounce)\s*=",
    ),
    rule(
        "xss-201",
        Xss,
        2,
        r"\b(?:constructor|__proto__|prototype)\b\s*(?:\[|\.|\()|\bnew\s+function\s*\(|\bimport\s*\(|\bself\s*\[|\btop\s*\[",
    ),
    rule("xss-300", Xss, 3, r"<\s*[a-z!/?][^>]*>?"),
    rule("xss-400", Xss, 4, r"[<>]"),
    // ── Path traversal and file inclusion ──────────────────────────────
    rule(
        "lfi-100",
        Path,
        1,
        r"(?:^|[\\/=:;\s])\.{2,3}[\\/]|[\\/]\.{2,3}(?:[\\/;]|$)",
    ),
    rule(
        "lfi-101",
        Path,
        1,
        r"(?:^|[\\/])(?:etc[\\/](?:passwd|shadow|group|hosts|issue|sudoers|crontab|master\.passwd|security[\\/])|proc[\\/](?:self|\d+)[\\/]|windows[\\/](?:win\.ini|system32|system\.ini)|boot\.ini|winnt[\\/])",
    ),
    rule(
        "lfi-102",
        Path,
        1,
        r"(?:^|[\\/])(?:\.htaccess|\.htpasswd|\.git[\\/]|\.svn[\\/]|\.ssh[\\/]|id_rsa|id_dsa|\.aws[\\/]credentials|\.bash_history|\.env$|web\.config|wp-config\.php)",
    ),
    rule(
        "lfi-103",
        Path,
        1,
        r"(?:file|php|phar|zip|glob|expect|data|gopher|dict|jar|netdoc|ldap|tftp|ssh2|rar|ogg|compress\.zlib|compress\.bzip2)://",
    ),
    rule(
        "lfi-104",
        Path,
        1,
        r"^(?:https?|ftps?)://(?:\d{1,3}\.){3}\d{1,3}\b|^(?:https?|ftps?)://[^\s?#]+\?+$",
    ),
    rule("lfi-200", Path, 2, r"^(?:https?|ftps?)://"),
    rule(
        "lfi-201",
        Path,
        2,
        r"(?:^|[\\/])(?:etc|proc|sys|var[\\/]log|root|boot|windows|winnt)[\\/]",
    ),
    // ── Command and code injection (shell, PHP, Java, Node, LDAP) ──────
    rule(
        "rce-100",
        Cmd,
        1,
        r"(?:[;&|`\n]|\$\(|\|\||&&)\s*(?:[\\/]?(?:usr[\\/])?s?bin[\\/])?(?:cat|ls|id|whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|zsh|ksh|csh|python\d?|perl|ruby|php|ping|nslookup|dig|rm|chmod|chown|echo|printf|busybox|powershell|cmd|telnet|ifconfig|ipconfig|tftp|sleep|env|head|tail|more|less|kill|pwd|socat|passwd|useradd|net)\b",
    ),
    rule(
        "rce-101",
        Cmd,
        1,
        r"[\\/](?:usr[\\/])?s?bin[\\/](?:sh|bash|zsh|ksh|csh|dash|nc|ncat|wget|curl|python\d?|perl|ruby|cat|id|whoami|uname|busybox|env)\b",
    ),
    rule(
        "rce-102",
        Cmd,
        1,
        r"\bcmd(?:\.exe)?\s*/[ck]\b|\bpowershell(?:\.exe)?\s+-|\bnet\s+(?:user|localgroup)\b|\bcertutil(?:\.exe)?\s+-|\bbitsadmin\b|\breg\s+(?:add|query|delete)\b|\bwmic\b|\brundll32\b|\bmshta\b",
    ),
    rule(
        "rce-103",
        Cmd,
        1,
        r"\(\s*\)\s*\{|\$\{?ifs\b|\$\(\s*[a-z]|`\s*(?:cat|ls|id|whoami|uname|wget|curl|nc|ping|sleep|echo)\b",
    ),
    rule(
        "rce-104",
        Cmd,
        1,
        r"<\?(?:php|=)|\b(?:eval|assert|system|exec|shell_exec|passthru|popen|proc_open|pcntl_exec|base64_decode|gzinflate|str_rot13|create_function|call_user_func(?:_array)?|preg_replace|file_get_contents|file_put_contents|fopen|fwrite|unserialize|phpinfo|include|require)(?:_once)?\s*\(",
    ),
    rule(
        "rce-105",
        Cmd,
        1,
        r"\$_(?:get|post|request|cookie|server|files|env|session)\b|\bphp://(?:input|filter)|\bo:\d+:\x22\w+\x22:\d+:\{",
    ),
    rule(
        "rce-106",
        Cmd,
        1,
        r"\$\{(?:jndi|env|sys|java|lower|upper|date|ctx|main|bundle|base64|k8s|docker|log4j|spring|web):|java\.lang\.(?:runtime|processbuilder|system|class)|getruntime\s*\(\s*\)\s*\.\s*exec|\.getclass\s*\(\s*\)|\bclassloader\b|ro0ab|aced0005",
    ),
    rule(
        "rce-107",
        Cmd,
        1,
        r"require\s*\(\s*['\x22`]child_process|process\s*\.\s*(?:mainmodule|binding|env|exit)\b|\bchild_process\b|\.constructor\s*\(\s*['\x22`]return\b",
    ),
    rule(
        "rce-108",
        Cmd,
        1,
        r"\(\s*[|&!]\s*\(\s*\w+\s*=|\*\s*\)\s*\(\s*[|&]|\)\s*\(\s*\|\s*\(\s*\w+\s*=\s*\*",
    ),
    rule("rce-109", Cmd, 1, r"\{\{.*?\}\}|\{%.*?%\}|\$\{[^}]*\}"),
    // A value that starts (or a quoted string that starts) with a command separator.
    rule(
        "rce-110",
        Cmd,
        1,
        r#"(?:^|['"(])\s*(?:;|\|{1,2}|&&|`|\$\()\s*['"]?[a-z][\w.-]*"#,
    ),
    rule(
        "rce-111",
        Cmd,
        1,
        r"\b(?:nohup|ifconfig|netstat|nmap|tcpdump|ssh-copy-id|ssh-keygen|crontab|mkfifo|mknod|xterm|strace|ltrace|visudo|useradd|usermod|get_defined_vars|get_defined_functions|phpinfo|shell_exec|passthru|proc_open|pcntl_exec)\b|\bchmod\s+[0-7+ugoa]|\bbase64\s+-d\b|/dev/(?:tcp|udp)/|\bfor\s+/[fdlr]\b",
    ),
    rule("rce-201", Cmd, 2, r"#\{[^}]*\}|\{\w+,[^}]*\}"),
    rule(
        "rce-200",
        Cmd,
        2,
        r"(?:^|[;&|`\s])(?:cat|ls|id|whoami|uname|wget|curl|nc|bash|sh|python|perl|ping|nslookup|rm|chmod|powershell|cmd)(?:\s+-\w+|\s+[\\/~.]|\s*$)",
    ),
    rule("rce-300", Cmd, 3, r"(?:[&|`]|\$\()\s*\w+|\$\w+"),
    // ── Protocol anomalies (also checked in code: see waf.rs) ──────────
    rule(
        "proto-100",
        Proto,
        1,
        r"(?:get|post|put|delete|head|options|patch|trace|connect)\s+\S+\s+http/\d(?:\.\d)?",
    ),
];

/// Protocol checks done in code, not by a regex over one value.
pub mod protocol {
    /// A `%` not followed by two hex digits in the raw request target.
    pub const BAD_ENCODING: &str = "proto-200";
    /// A NUL byte in a decoded value.
    pub const NUL: &str = "proto-201";
    /// A file extension that is never served (backups, configs, keys).
    pub const RESTRICTED_EXTENSION: &str = "proto-202";
    /// A request body without a Content-Type.
    pub const BODY_WITHOUT_TYPE: &str = "proto-203";
    /// CR or LF in a decoded query value or header: header injection,
    /// response splitting.
    pub const CRLF: &str = "proto-204";
    /// Control characters (other than tab) in a decoded value (paranoia 2).
    pub const CONTROL_CHARS: &str = "proto-300";
    /// A body type outside the usual API and form types (paranoia 2).
    pub const CONTENT_TYPE: &str = "proto-301";
    /// A `Host` that is a bare IP address (paranoia 2).
    pub const HOST_IS_IP: &str = "proto-302";
}
