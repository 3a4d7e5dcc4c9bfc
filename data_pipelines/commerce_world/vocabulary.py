"""The fixed bilingual vocabulary the world is drawn from: cities, product kinds, shop names, refund rules.

Everything a generated sentence names comes from here, in English and Chinese, so tools accept either
language and the splits can hold out whole entities (cities, shops, items) while kinds stay shared.
"""

from __future__ import annotations

from dataclasses import dataclass

# Many cities, not a handful: with 14 training cities, 900 fine-tuning steps that copied order ids 90-100% right
# wrote a training city into every held-out search (0%), so held-out cities could not tell copying from a learnt
# list. With 89 and cities as one rare token each, 900 steps wrote 2% of training-dialog cities right, 0% held-out.
# Spelt in letters (data_pipelines/tokenizer.py) they are 39% and 0%: the model copies a held-out city's first
# letters and finishes a training city with them ("Beihai" -> "Beijing").
CITIES: list[tuple[str, str]] = [
    ("Hangzhou", "杭州"), ("Shanghai", "上海"), ("Beijing", "北京"), ("Shenzhen", "深圳"), ("Chengdu", "成都"),
    ("Wuhan", "武汉"), ("Nanjing", "南京"), ("Xi'an", "西安"), ("Suzhou", "苏州"), ("Guangzhou", "广州"),
    ("Chongqing", "重庆"), ("Tianjin", "天津"), ("Qingdao", "青岛"), ("Xiamen", "厦门"), ("Kunming", "昆明"),
    ("Changsha", "长沙"), ("Harbin", "哈尔滨"), ("Dalian", "大连"), ("Ningbo", "宁波"), ("Hefei", "合肥"),
    ("Fuzhou", "福州"), ("Jinan", "济南"), ("Zhengzhou", "郑州"), ("Lanzhou", "兰州"),
    ("Shijiazhuang", "石家庄"), ("Taiyuan", "太原"), ("Hohhot", "呼和浩特"), ("Shenyang", "沈阳"),
    ("Changchun", "长春"), ("Nanchang", "南昌"), ("Nanning", "南宁"), ("Haikou", "海口"), ("Guiyang", "贵阳"),
    ("Lhasa", "拉萨"), ("Xining", "西宁"), ("Yinchuan", "银川"), ("Urumqi", "乌鲁木齐"), ("Wuxi", "无锡"),
    ("Xuzhou", "徐州"), ("Nantong", "南通"), ("Yangzhou", "扬州"), ("Zhenjiang", "镇江"),
    ("Wenzhou", "温州"), ("Shaoxing", "绍兴"), ("Jiaxing", "嘉兴"), ("Huzhou", "湖州"), ("Jinhua", "金华"),
    ("Quanzhou", "泉州"), ("Foshan", "佛山"), ("Dongguan", "东莞"), ("Zhuhai", "珠海"),
    ("Shantou", "汕头"), ("Huizhou", "惠州"), ("Jiangmen", "江门"), ("Zhanjiang", "湛江"), ("Guilin", "桂林"),
    ("Liuzhou", "柳州"), ("Beihai", "北海"), ("Sanya", "三亚"), ("Zunyi", "遵义"),
    ("Lijiang", "丽江"), ("Yibin", "宜宾"), ("Mianyang", "绵阳"), ("Leshan", "乐山"), ("Luoyang", "洛阳"),
    ("Kaifeng", "开封"), ("Nanyang", "南阳"), ("Yichang", "宜昌"), ("Xiangyang", "襄阳"),
    ("Jingzhou", "荆州"), ("Yueyang", "岳阳"), ("Hengyang", "衡阳"), ("Changde", "常德"),
    ("Ganzhou", "赣州"), ("Jiujiang", "九江"), ("Jingdezhen", "景德镇"), ("Wuhu", "芜湖"), ("Bengbu", "蚌埠"),
    ("Anqing", "安庆"), ("Huangshan", "黄山"), ("Yantai", "烟台"), ("Weifang", "潍坊"), ("Zibo", "淄博"),
    ("Linyi", "临沂"), ("Weihai", "威海"), ("Jining", "济宁"), ("Baoding", "保定"), ("Tangshan", "唐山"),
    ("Handan", "邯郸"), ("Qinhuangdao", "秦皇岛"), ("Datong", "大同"), ("Baotou", "包头"), ("Anshan", "鞍山"),
    ("Daqing", "大庆"), ("Baoji", "宝鸡"), ("Xianyang", "咸阳"), ("Yan'an", "延安"), ("Dunhuang", "敦煌"),
    ("Kashgar", "喀什"),
]

# Service lines of the source material and the categories inside them (hotel and travel share a line).
SERVICE_LINES: dict[str, tuple[str, str]] = {
    "food": ("food_delivery", "外卖"), "grocery": ("groceries", "生鲜"), "cinema": ("cinema", "电影"),
    "hotel": ("hotel_travel", "酒旅"), "travel": ("hotel_travel", "酒旅"),
}
# Each category is drawn as one shape, so the category is readable from a product image.
CATEGORY_SHAPES: dict[str, str] = {
    "food": "circle", "grocery": "square", "cinema": "diamond", "hotel": "triangle", "travel": "hexagon",
}
SHAPES_ZH: dict[str, str] = {"circle": "圆形", "square": "方形", "diamond": "菱形", "triangle": "三角形",
                             "hexagon": "六边形"}
COLOURS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "red": ("红色", (220, 40, 40)), "green": ("绿色", (40, 170, 60)), "blue": ("蓝色", (40, 80, 220)),
    "yellow": ("黄色", (235, 200, 30)), "purple": ("紫色", (140, 50, 180)), "orange": ("橙色", (240, 130, 20)),
}


@dataclass(frozen=True)
class Kind:
    """A product kind a user asks for ("milk tea"); shops in every city sell several items of it."""

    key: str
    en: str
    zh: str
    category: str
    unit_en: str
    unit_zh: str
    price_range: tuple[int, int]
    times: tuple[str, ...]  # delivery slots, show times, departure times or check-in dates
    names: tuple[tuple[str, str], ...]
    max_count: int


_LUNCH = ("11:30", "12:30", "18:00", "19:30")
KINDS: list[Kind] = [
    Kind("milk_tea", "milk tea", "奶茶", "food", "cup", "杯", (9, 32), ("12:00", "15:30", "18:00", "20:30"),
         (("jasmine milk tea", "茉莉奶茶"), ("brown sugar boba", "黑糖珍珠奶茶"), ("taro milk tea", "芋泥奶茶"),
          ("oolong milk tea", "乌龙奶茶")), 4),
    Kind("coffee", "coffee", "咖啡", "food", "cup", "杯", (12, 38), ("08:30", "10:00", "14:00", "16:30"),
         (("latte", "拿铁"), ("americano", "美式咖啡"), ("flat white", "澳白"), ("mocha", "摩卡")), 4),
    Kind("noodles", "noodles", "面条", "food", "bowl", "碗", (15, 45), _LUNCH,
         (("beef noodles", "牛肉面"), ("dan dan noodles", "担担面"), ("wonton noodles", "云吞面"),
          ("cold noodles", "凉面")), 4),
    Kind("dumplings", "dumplings", "饺子", "food", "serving", "份", (18, 48), _LUNCH,
         (("pork dumplings", "猪肉饺子"), ("shrimp dumplings", "虾饺"), ("leek dumplings", "韭菜饺子"),
          ("soup dumplings", "小笼包")), 4),
    Kind("eggs", "eggs", "鸡蛋", "grocery", "box", "盒", (10, 35), ("09:00", "13:00", "17:00", "20:00"),
         (("free-range eggs", "散养鸡蛋"), ("organic eggs", "有机鸡蛋"), ("brown eggs", "红皮鸡蛋")), 4),
    Kind("milk", "milk", "牛奶", "grocery", "bottle", "瓶", (6, 28), ("09:00", "13:00", "17:00", "20:00"),
         (("whole milk", "全脂牛奶"), ("low-fat milk", "低脂牛奶"), ("oat milk", "燕麦奶")), 4),
    Kind("fruit", "fruit box", "水果盒", "grocery", "box", "盒", (20, 68), ("09:00", "13:00", "17:00", "20:00"),
         (("mango box", "芒果盒"), ("berry box", "莓果盒"), ("apple box", "苹果盒")), 4),
    Kind("movie", "movie ticket", "电影票", "cinema", "ticket", "张", (35, 120), ("14:10", "16:40", "19:20", "21:50"),
         (("Star River", "星河"), ("Moon Harbor", "月港"), ("Last Train", "末班车"), ("Paper Tiger", "纸老虎")), 4),
    Kind("hotel", "hotel room", "酒店房间", "hotel", "night", "晚", (180, 900), ("03-14", "03-15", "03-21", "03-22"),
         (("standard double", "标准大床房"), ("twin room", "双床房"), ("family suite", "家庭套房")), 2),
    Kind("train", "train ticket", "火车票", "travel", "ticket", "张", (55, 560), ("07:15", "09:40", "13:05", "18:30"),
         (("second class seat", "二等座"), ("first class seat", "一等座"), ("sleeper berth", "卧铺")), 4),
]
KINDS_BY_KEY: dict[str, Kind] = {k.key: k for k in KINDS}

SHOP_ADJECTIVES: list[tuple[str, str]] = [
    ("Golden", "金"), ("Jade", "玉"), ("Lotus", "莲"), ("Panda", "熊猫"), ("Harbor", "港湾"), ("Sunny", "阳光"),
    ("Cloud", "云"), ("River", "河畔"), ("Maple", "枫"), ("Pine", "松"), ("Silver", "银"), ("Coral", "珊瑚"),
    ("Orchid", "兰"), ("Bamboo", "竹"), ("Amber", "琥珀"), ("Willow", "柳"), ("Peach", "桃"), ("Lucky", "福"),
    ("Star", "星"), ("Moon", "月"), ("Spring", "春"), ("Autumn", "秋"), ("Crane", "鹤"), ("Tiger", "虎"),
    ("Pearl", "珍珠"), ("Ruby", "红宝石"), ("Phoenix", "凤凰"), ("Dragon", "龙"), ("Lantern", "灯笼"), ("Plum", "梅"),
    ("Cedar", "杉"), ("Crystal", "水晶"), ("Ocean", "海洋"), ("Summit", "峰"), ("Garden", "花园"), ("Sunrise", "旭日"),
    ("Swan", "天鹅"), ("Emerald", "翡翠"), ("Happy", "开心"), ("Fortune", "富贵"),
]
SHOP_NOUNS: dict[str, list[tuple[str, str]]] = {
    "food": [("Kitchen", "厨房"), ("Canteen", "食堂"), ("Diner", "小馆"), ("Deli", "餐坊"), ("Bistro", "餐厅"),
             ("Noodle Bar", "面馆"), ("Eatery", "食府"), ("Tea House", "茶楼")],
    "grocery": [("Market", "市场"), ("Grocer", "杂货铺"), ("Fresh Mart", "生鲜"), ("Pantry", "食品店"),
                ("Store", "商店"), ("Farm Shop", "农场"), ("Supermart", "超市"), ("Greens", "菜铺")],
    "cinema": [("Cinema", "影院"), ("Theater", "剧场"), ("Film Hall", "影厅"), ("Screens", "影城"),
               ("Movies", "电影院"), ("Picture House", "影坊"), ("Playhouse", "戏院"), ("Studio", "影棚")],
    "hotel": [("Hotel", "酒店"), ("Inn", "客栈"), ("Lodge", "旅舍"), ("Suites", "公寓"), ("Resort", "度假村"),
              ("Guesthouse", "民宿"), ("Residence", "公馆"), ("Stay", "住宿")],
    "travel": [("Rail", "铁路"), ("Express", "快线"), ("Line", "线路"), ("Trains", "动车"), ("Tracks", "铁道"),
               ("Transit", "交运"), ("Shuttle", "客运"), ("Coaches", "专线")],
}


@dataclass(frozen=True)
class RefundRule:
    """Refund/change terms shown at the top of an option card; the fee and change flag drive the tools."""

    key: str
    en: str
    zh: str
    refund_fee_pct: int
    change_allowed: bool


REFUND_RULES: list[RefundRule] = [
    RefundRule("full_free_change", "Full refund; free change", "全额退款,可免费改期", 0, True),
    RefundRule("fee10_free_change", "10% refund fee; free change", "退款扣10%,可免费改期", 10, True),
    RefundRule("fee20_no_change", "20% refund fee; no change", "退款扣20%,不可改期", 20, False),
    RefundRule("full_no_change", "Full refund; no change", "全额退款,不可改期", 0, False),
]
RULES_BY_KEY: dict[str, RefundRule] = {r.key: r for r in REFUND_RULES}
