"""The commerce environment for evaluation: tools and user simulator from data_pipelines.commerce_world,
the episode loop and its ledger (env), metrics and pass^k (scoring), tool-call parsing for generated text.
"""

from train.eval.commerce_env.env import Agent, CommerceEnv, Episode, estimate_tokens
from train.eval.commerce_env.evaluation import EvalResult, evaluate
from train.eval.commerce_env.scoring import ScenarioScore, pass_hat_k, score_episode, summarize
from train.eval.commerce_env.tool_call_parsing import ParsedReply, parse_tool_calls

__all__ = ["Agent", "CommerceEnv", "Episode", "EvalResult", "ParsedReply", "ScenarioScore", "estimate_tokens",
           "evaluate", "parse_tool_calls", "pass_hat_k", "score_episode", "summarize"]
