"""Judges for what can't be compared literally: agent responses under semantic matching, semantic
`$matchType` args, and natural-language expectations (rubrics).

* `TextSimilarityJudge` (offline, the default): a deterministic text-similarity score from
  rapidfuzz. It is labelled as what it is; it is not CES's semantic-similarity metric, and it
  cannot judge rubrics (those come out SKIPPED).
* `GeminiJudge`: asks Gemini (google-genai, with credentials) for CES's 0..4 semantic score and
  rubric verdicts.

A judge is any object with `name`, `similarity(expected, observed) -> Judgement` and
`rubric(expectation, conversation_text) -> Judgement | None` (None: cannot judge)."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass
class Judgement:
    score: float          # 0..1
    passed: bool
    label: str            # which judge, and how it scored
    explanation: str = ""


class TextSimilarityJudge:
    """rapidfuzz's token_sort_ratio on case-folded text, 0..1; passes at `threshold`."""

    name = "text similarity (rapidfuzz, offline; not CES semantic similarity)"

    def __init__(self, threshold: float = 0.8):
        self.threshold = threshold

    def similarity(self, expected: str, observed: str, threshold: float | None = None) -> Judgement:
        from rapidfuzz import fuzz, utils

        score = fuzz.token_sort_ratio(expected, observed, processor=utils.default_process) / 100.0
        limit = self.threshold if threshold is None else threshold
        return Judgement(round(score, 4), score >= limit, self.name, f"text similarity {score:.2f} (passes at {limit:.2f})")

    def rubric(self, expectation: str, conversation: str) -> Judgement | None:
        return None


class GeminiJudge:
    """Gemini as judge, through google-genai (ADK's dependency): GOOGLE_API_KEY, or Vertex AI
    (GOOGLE_GENAI_USE_VERTEXAI, GOOGLE_CLOUD_PROJECT, GOOGLE_CLOUD_LOCATION)."""

    def __init__(self, model: str = "gemini-2.5-flash", threshold: int = 3, client=None):
        self.model, self.threshold, self._client = model, threshold, client
        self.name = f"Gemini judge ({model}, CES's 0..4 semantic scale)"

    def _ask(self, prompt: str) -> dict:
        from google import genai

        client = self._client or genai.Client()
        self._client = client
        response = client.models.generate_content(model=self.model, contents=prompt,
                                                  config={"response_mime_type": "application/json", "temperature": 0})
        return json.loads(response.text)

    def similarity(self, expected: str, observed: str, threshold: float | None = None) -> Judgement:
        answer = self._ask(
            "Rate how well the OBSERVED agent response matches the EXPECTED one in meaning, on 0..4 "
            "(4: same meaning, 0: unrelated). Answer JSON {\"score\": int, \"explanation\": str}.\n"
            f"EXPECTED: {expected}\nOBSERVED: {observed}")
        score = int(answer.get("score", 0))
        limit = self.threshold if threshold is None else threshold
        return Judgement(score / 4, score >= limit, self.name, str(answer.get("explanation", "")))

    def rubric(self, expectation: str, conversation: str) -> Judgement | None:
        answer = self._ask(
            "Does the conversation meet the expectation? Answer JSON {\"met\": bool, \"explanation\": str}.\n"
            f"EXPECTATION: {expectation}\nCONVERSATION:\n{conversation}")
        met = bool(answer.get("met"))
        return Judgement(1.0 if met else 0.0, met, self.name, str(answer.get("explanation", "")))
