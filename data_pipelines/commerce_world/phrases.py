"""What people in the world say, in English and Chinese: the assistant's fixed templates, the user's variants.

The assistant's wording is one template per situation (short and regular, so a ~10M model learns the
protocol); the user's wording varies by a seeded choice. The markers at the bottom are how the user
simulator recognises what an assistant message is doing, whoever wrote it.
"""

from __future__ import annotations

import random

SYSTEM = {
    "en": "You are a shopping assistant. Ask only for missing details, show options with terms first, "
          "and order only after the user confirms.",
    "zh": "你是购物助手。只询问缺少的信息,先展示退改规则和选项,用户确认后才下单。",
}
SLOTS = ("city", "time", "count", "budget")
ASK = {
    "en": {"city": "Which city?", "time": "What time?", "count": "How many?", "budget": "Budget per item?"},
    "zh": {"city": "哪个城市?", "time": "什么时间?", "count": "要几份?", "budget": "每份预算多少?"},
}
CARDS_HEAD = {"en": "Options (terms first):", "zh": "可选(先看退改):"}
CARD = {"en": "{n}. [{terms}] {item_id} {name} | {shop} | {time} | {price} yuan",
        "zh": "{n}. [{terms}] {item_id} {name} | {shop} | {time} | {price}元"}
CARDS_TAIL = {"en": "Which option?", "zh": "选哪个?"}
SOLD_OUT = {"en": "Sorry, {item_id} is sold out. Please pick another option.", "zh": "抱歉,{item_id}已售罄,请换一个。"}
NO_RESULTS = {"en": "No options within {budget} yuan. Raise the budget?", "zh": "没有{budget}元以内的选项,提高预算吗?"}
ORDER_DONE = {"en": "Order {order_id} confirmed: {count} x {name}, {time}, total {total} yuan.",
              "zh": "订单{order_id}已确认:{name} x{count},{time},共{total}元。"}
DECLINED = {"en": "OK, no order placed.", "zh": "好的,不下单了。"}
CHANGE_PROMPT = {"en": "Terms: {terms}. Change {order_id} from {old} to {new}. Proceed?",
                 "zh": "退改规则:{terms}。订单{order_id}从{old}改到{new},是否继续?"}
REFUND_PROMPT = {"en": "Terms: {terms}. Refund {order_id}: {amount} yuan back. Proceed?",
                 "zh": "退改规则:{terms}。订单{order_id}退款{amount}元,是否继续?"}
CHANGE_DONE = {"en": "Done. {order_id} is now at {time}.", "zh": "已完成,订单{order_id}改到{time}。"}
REFUND_DONE = {"en": "Done. {order_id} refunded {amount} yuan.", "zh": "已完成,订单{order_id}已退款{amount}元。"}
NOT_FOUND = {"en": "I can't find order {order_id}. Which order number?", "zh": "找不到订单{order_id},订单号是多少?"}
NOTHING_DONE = {"en": "OK, nothing changed.", "zh": "好的,未做更改。"}

# A declining user may use the simulator's "reject" words: after a search in the wrong city the user rejects the
# options that way, and a model that never read those words in training ordered anyway (all 9 unconfirmed orders
# in the stored transcripts of a 900-step run came right after them). No order is the answer to both.
_REJECT = {"en": ["None of these fit what I asked."], "zh": ["这些都不符合我的要求。"]}
_USER = {
    "en": {
        "open": ["I want {need}", "Please get me {need}", "Can you order {need}"],
        "city": [" in {city}"], "time": [" at {time}"], "budget": [", max {budget} yuan each"],
        "answer_city": ["In {city}.", "{city}."], "answer_time": ["At {time}.", "{time}."],
        "answer_count": ["{count} of them.", "{count}."], "answer_budget": ["Up to {budget} yuan.", "{budget} yuan max."],
        "choose": ["Option {k}, please order it.", "I'll take option {k}. Go ahead.", "Option {k}. Yes, order it."],
        "choose_again": ["Then option {k}, please.", "OK, option {k} then."],
        "decline": ["None of these, thanks.", "No thanks, I'll pass.", *_REJECT["en"]],
        "reject": _REJECT["en"],
        "raise_budget": ["OK, up to {budget} yuan.", "Then up to {budget} yuan each."],
        "yes": ["Yes, go ahead.", "Yes, please."], "no": ["No, don't."],
        "answer_order_id": ["It's {order_id}.", "{order_id}."],
        "change": ["Please change order {order_id} to {time}.", "Can you move my order {order_id} to {time}?"],
        "refund": ["I want a refund for order {order_id}.", "Please refund my order {order_id}."],
    },
    "zh": {
        "open": ["我想要{need}", "帮我订{need}", "请帮我买{need}"],
        "city": ["在{city},"], "time": ["{time},"], "budget": [",每份不超过{budget}元"],
        "answer_city": ["在{city}。", "{city}。"], "answer_time": ["{time}。", "时间{time}。"],
        "answer_count": ["{count}份。", "要{count}份。"], "answer_budget": ["每份最多{budget}元。", "{budget}元以内。"],
        "choose": ["第{k}个,帮我下单。", "选{k},确认下单。", "就要第{k}个,下单吧。"],
        "choose_again": ["那就第{k}个吧。", "换成第{k}个。"],
        "decline": ["都不要了,谢谢。", "算了,不用了。", *_REJECT["zh"]],
        "reject": _REJECT["zh"],
        "raise_budget": ["那每份最多{budget}元。", "提高到每份{budget}元。"],
        "yes": ["是的,继续。", "好的,确认。"], "no": ["不用了。"],
        "answer_order_id": ["订单号是{order_id}。", "{order_id}。"],
        "change": ["请把订单{order_id}改到{time}。", "订单{order_id}帮我改成{time}。"],
        "refund": ["订单{order_id}我要退款。", "请帮我把订单{order_id}退款。"],
    },
}


def user_says(lang: str, key: str, rng: random.Random, **values: object) -> str:
    return rng.choice(_USER[lang][key]).format(**values)


def first_order_message(lang: str, rng: random.Random, kind_name: str, values: dict[str, object],
                        revealed: list[str]) -> str:
    """The opening request: the item always, plus the revealed slots (city, time, count, budget)."""
    count = values["count"] if "count" in revealed else None
    if lang == "zh":
        need = f"{count}份{kind_name}" if count else kind_name
        text = "".join(user_says(lang, s, rng, **values) for s in ("city", "time") if s in revealed)
        text += user_says(lang, "open", rng, need=need)
        text += user_says(lang, "budget", rng, **values) if "budget" in revealed else ""
        return text + "。"
    need = f"{count} {kind_name}" if count else kind_name
    text = user_says(lang, "open", rng, need=need)
    text += "".join(user_says(lang, s, rng, **values) for s in ("city", "time", "budget") if s in revealed)
    return text + ("?" if text.startswith("Can") else ".")


# How an assistant message is recognised (lower-cased English, Chinese as is).
SLOT_MARKERS = {"city": ("city", "城市"), "time": ("time", "时间"), "count": ("how many", "几份"),
                "budget": ("budget", "预算")}
SOLD_OUT_MARKERS = ("sold out", "售罄")
NO_RESULTS_MARKERS = ("no options", "没有")
PROCEED_MARKERS = ("proceed?", "是否继续")
NOT_FOUND_MARKERS = ("can't find", "找不到")
