"""Words the templates need in both languages: tiers, categories, statuses, step kinds.

Templates hold the prose; these are the names of the values that go into it.
"""

from __future__ import annotations

TIER_NAMES = {
    "zh-CN": {"T1": "特别重大", "T2": "重大", "T3": "较大", "T4": "一般（确认泄露）", "T5": "违规（可疑泄露）",
              "T6": "异常（提示）"},
    "en": {"T1": "especially major", "T2": "major", "T3": "relatively major", "T4": "general (confirmed leak)",
           "T5": "violation (suspected leak)", "T6": "anomaly (informational)"},
}

# GB/T 20986-2023 categories: data-security events (leak), rule-violating operations
INCIDENT_TYPES = {
    "zh-CN": {"leak": "数据安全事件 — 数据泄露", "violation": "违规操作事件 — 权限滥用", "anomaly": "其他事件 — 异常访问"},
    "en": {"leak": "data-security event: data leak", "violation": "rule-violating operation: privilege abuse",
           "anomaly": "other event: anomalous access"},
}

CATEGORY_NAMES = {
    "zh-CN": {"identity": "身份信息（姓名、性别、生日等）", "contact": "联系方式（电话、地址等）", "media": "媒体信息（照片等）",
              "property": "财产信息（交易、余额、积分、优惠券）", "location": "精确位置信息", "device": "设备标识",
              "biometric": "生物识别信息（人脸）", "order": "订单和配送信息"},
    "en": {"identity": "identity (name, gender, birthday, ...)", "contact": "contact details (phone, address, ...)",
           "media": "media (photos, ...)", "property": "property (transactions, balance, points, coupons)",
           "location": "precise location", "device": "device identifiers", "biometric": "biometric data (face)",
           "order": "orders and deliveries"},
}

# what could follow from each category: for "possible harm" in notices and reports
HARMS = {
    "zh-CN": {"identity": "冒用身份、诈骗", "contact": "骚扰电话、短信和邮件，冒充客服的诈骗", "property": "财产损失、针对性诈骗",
              "location": "人身安全风险、被跟踪", "biometric": "身份冒用", "order": "冒充快递或客服的诈骗",
              "device": "设备追踪", "media": "隐私泄露"},
    "en": {"identity": "identity misuse and fraud", "contact": "nuisance calls, messages and mails; scams posing as "
           "customer service", "property": "financial loss, targeted fraud", "location": "risks to personal "
           "safety, being followed", "biometric": "identity misuse", "order": "scams posing as couriers or "
           "customer service", "device": "device tracking", "media": "loss of privacy"},
}

STATUS_NAMES = {
    "zh-CN": {"open": "已发现", "triaged": "已研判", "contained": "已控制", "notified": "已通知", "resolved": "已处置完毕",
              "closed": "已结案", "dismissed": "已排除"},
    "en": {"open": "open", "triaged": "triaged", "contained": "contained", "notified": "notified",
           "resolved": "resolved", "closed": "closed", "dismissed": "dismissed"},
}

STATE_NAMES = {
    "zh-CN": {"pending": "待办", "running": "执行中", "review": "待复核", "requested": "待审批", "done": "已完成",
              "approved": "已批准", "skipped": "已跳过", "failed": "失败", "cancelled": "已取消"},
    "en": {s: s for s in ("pending", "running", "review", "requested", "done", "approved", "skipped", "failed",
                          "cancelled")},
}


def incident_type(tier: str) -> str:
    if tier in ("T1", "T2", "T3", "T4"):
        return "leak"
    return "violation" if tier == "T5" else "anomaly"


def vocabulary(language: str) -> dict[str, dict[str, str]]:
    return {"tiers": TIER_NAMES[language], "types": INCIDENT_TYPES[language], "categories": CATEGORY_NAMES[language],
            "harms": HARMS[language], "statuses": STATUS_NAMES[language], "states": STATE_NAMES[language]}
