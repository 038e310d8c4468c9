"""Request bodies and URLs from Google's pages on the endpoint (/work/shared/seeds), transcribed field for field.

Shell placeholders are filled with concrete values (`${PROJECT_ID}` -> sim-project, `${ENDPOINT}` ->
1234567890); everything else is as the pages print it. SDK examples are given as the JSON the SDK sends.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

PROJECT = "sim-project"
ENDPOINT_ID = "1234567890"
WEATHER_TOOL: dict[str, Any] = {  # the function calling SDK example
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. Chicago, IL"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
CURRENT_WEATHER_TOOL: dict[str, Any] = {  # the stream_function_call_arguments curl example
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "unit"],
        },
    },
}
GET_IMAGE_TOOL: dict[str, Any] = {  # the multimodal function response curl example
    "type": "function",
    "function": {
        "name": "get_image",
        "description": "Retrieves the image file reference for a specific order item.",
        "parameters": {
            "type": "object",
            "properties": {
                "item_name": {
                    "type": "string",
                    "description": "The name or description of the item ordered (e.g., 'green shirt').",
                }
            },
            "required": ["item_name"],
        },
    },
}

STORY = {"role": "user", "content": "Write a story about a magic backpack."}

# POST https://aiplatform.googleapis.com/v1beta1/projects/P/locations/global/endpoints/{ENDPOINT}/chat/completions
SELF_DEPLOYED = {"messages": [STORY]}
SELF_DEPLOYED_STREAMING = {"stream": True, "messages": [STORY]}

# POST https://us-central1-aiplatform.googleapis.com/v1/.../locations/us-central1/endpoints/openapi/...
THINKING_CONFIG = {
    "model": "google/gemini-2.5-flash-preview-04-17",
    "messages": [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Are there any primes number of the form n*ceil(log(n))"}],
        }
    ],
    "extra_body": {
        "google": {
            "thinking_config": {"include_thoughts": True, "thinking_budget": 10000},
            "thought_tag_marker": "think",
        }
    },
    "stream": True,
}

# The thinking SDK example: client.chat.completions.create(..., reasoning_effort="low", ...)
REASONING_EFFORT = {
    "model": "google/gemini-2.5-flash-preview-04-17",
    "reasoning_effort": "low",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Explain to me how AI works"},
    ],
}

IMAGE_GS = {
    "model": "google/gemini-2.0-flash-001",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this image"},
                {"type": "image_url", "image_url": "gs://cloud-samples-data/generative-ai/image/scones.jpg"},
            ],
        }
    ],
}

AUDIO_GS = {
    "model": "google/gemini-2.0-flash-001",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this: "},
                {
                    "type": "input_audio",
                    "input_audio": {
                        "format": "audio/mp3",
                        "data": "gs://cloud-samples-data/generative-ai/audio/pixel.mp3",
                    },
                },
            ],
        }
    ],
}

# POST https://aiplatform.googleapis.com/v1/projects/P/locations/global/endpoints/openapi/chat/completions
STREAM_FUNCTION_CALL_ARGUMENTS = {
    "model": "google/gemini-3.1-pro-preview",
    "messages": [{"role": "user", "content": "What is the weather like in Boston and New Delhi today?"}],
    "tools": [CURRENT_WEATHER_TOOL],
    "extra_body": {"google": {"stream_function_call_arguments": True}},
    "stream": True,
}

IMAGE_GENERATION = {
    "model": "google/gemini-3-pro-image-preview",
    "messages": [{"role": "user", "content": "Generate an image of a cat."}],
    "modalities": ["image"],
}

SHIRT_CALL_ID = "function-call-a350228d-0283-4792-8bfa-40da064fb959"
SHIRT_MESSAGES: list[dict[str, Any]] = [
    {"role": "user", "content": "Show me the green shirt I ordered last month."},
    {
        "role": "assistant",
        "tool_calls": [
            {
                "extra_content": {"google": {"thought_signature": "<THOUGHT_SIGNATURE>"}},
                "function": {"arguments": '{"item_name":"green shirt"}', "name": "get_image"},
                "id": SHIRT_CALL_ID,
                "type": "function",
            }
        ],
    },
    {
        "role": "tool",
        "tool_call_id": SHIRT_CALL_ID,
        "content": '{"image_ref":{"$ref":"dress.jpg"}}',
        "extra_content": {
            "google": {
                "parts": [
                    {
                        "file_data": {
                            "mime_type": "image/jpg",
                            "display_name": "dress.jpg",
                            "file_uri": "gs://cloud-samples-data/generative-ai/image/dress.jpg",
                        }
                    }
                ]
            }
        },
    },
]
MULTIMODAL_FUNCTION_RESPONSE = {
    "model": "google/gemini-3.1-pro-preview",
    "messages": SHIRT_MESSAGES,
    "tools": [GET_IMAGE_TOOL],
}

# The function calling SDK example.
FUNCTION_CALLING = {
    "model": "google/gemini-2.0-flash",
    "messages": [{"role": "user", "content": "What's the weather like in Chicago today?"}],
    "tools": [WEATHER_TOOL],
    "tool_choice": "auto",
}


class CalendarEvent(BaseModel):  # the structured output SDK example's model (no docstring: it would enter the schema)
    name: str
    date: str
    participants: list[str]


def structured_output() -> dict[str, Any]:
    """What client.beta.chat.completions.parse(response_format=CalendarEvent, ...) sends."""
    from openai.lib._parsing._completions import type_to_response_format_param

    return {
        "model": "google/gemini-2.5-flash-preview-04-17",
        "messages": [
            {"role": "system", "content": "Extract the event information."},
            {"role": "user", "content": "Alice and Bob are going to a science fair on Friday."},
        ],
        "response_format": type_to_response_format_param(CalendarEvent),
    }


def path(location: str = "us-central1", version: str = "v1", endpoint: str = "openapi") -> str:
    """The request path of a seed URL, as the simulator records it."""
    return f"/{version}/projects/{PROJECT}/locations/{location}/endpoints/{endpoint}/chat/completions"


# The seeds' URLs, with ${PROJECT_ID} = sim-project and ${ENDPOINT} = ENDPOINT_ID.
URLS = {
    "regional_v1beta1": f"https://us-central1-aiplatform.googleapis.com{path(version='v1beta1')}",
    "regional_v1": f"https://us-central1-aiplatform.googleapis.com{path()}",
    "global_v1": f"https://aiplatform.googleapis.com{path('global')}",
    "global_v1beta1": f"https://aiplatform.googleapis.com{path('global', 'v1beta1')}",
    "self_deployed": f"https://aiplatform.googleapis.com{path('global', 'v1beta1', ENDPOINT_ID)}",
}
