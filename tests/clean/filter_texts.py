"""Hand-made English and Chinese prose shared by the filter tests (a module, not a test file)."""

from lmforge.pipeline.stage import Keep
from lmforge.records import Record

EN = [
    "The library opened a new reading room on the second floor last spring.",
    "Volunteers repaired old bicycles and gave them to students who needed transport.",
    "A heavy storm closed the mountain road for three days in early March.",
    "Farmers in the valley planted more beans this year because of the dry weather.",
    "The museum added a small exhibit about the history of local printing shops.",
    "Engineers tested the bridge with loaded trucks before it opened to traffic.",
    "Our neighbour bakes bread every Sunday and shares it with the whole street.",
    "The river was clean enough that children could swim near the old mill.",
    "Researchers counted birds along the coast to see how the population had changed.",
    "The town council voted to plant trees along both sides of the main avenue.",
    "Several teachers organised a chess club that meets after school on Thursdays.",
    "A quiet café near the station serves soup and sandwiches until late evening.",
]
ZH = [
    "图书馆去年春天在二楼开设了一间新的阅览室。",
    "志愿者修好了旧自行车，并把它们送给需要的学生。",
    "三月初的一场暴雨让山路封闭了整整三天。",
    "由于天气干旱，山谷里的农民今年多种了一些豆子。",
    "博物馆增加了一个关于本地印刷历史的小型展览。",
    "工程师在大桥通车之前用满载的卡车做了测试。",
    "我们的邻居每个星期天都烤面包，并分给整条街的人。",
    "河水干净得让孩子们可以在老磨坊附近游泳。",
    "研究人员沿着海岸统计鸟类，看看数量发生了什么变化。",
    "镇议会投票决定在主干道两旁种树。",
    "几位老师组织了一个象棋俱乐部，每周四放学后活动。",
    "车站附近一家安静的咖啡馆一直营业到深夜。",
]
PROSE = {"en": EN, "zh": ZH}
LANGS = ["en", "zh"]
# A filler word of each language that is a word of its own to jieba and to the English tokenizer.
WORD = {"en": "harbour", "zh": "我们"}


def verdict(stage, text: str, lang: str = "") -> str:
    v = stage.decide(Record(id="t", text=text, lang=lang))
    return "keep" if isinstance(v, Keep) else v.reason


def repeated(word: str, n: int) -> str:
    return " ".join([word] * n)
